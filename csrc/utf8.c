#include "utf8.h"

int tq_utf8_scan(const unsigned char *s, size_t n)
{
    unsigned char lead = s[0];
    if (lead < 0x80) {
        return 1;
    }

    /* Expected length, and the valid range of the second byte, which excludes
     * overlong forms (E0, F0), surrogates (ED) and code points above U+10FFFF (F4),
     * as in the UTF-8 byte sequence syntax of RFC 3629, section 4. */
    int need;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        need = 2;
    } else if (lead == 0xE0) {
        need = 3;
        low = 0xA0;
    } else if (lead == 0xED) {
        need = 3;
        high = 0x9F;
    } else if (lead >= 0xE1 && lead <= 0xEF) {
        need = 3;
    } else if (lead == 0xF0) {
        need = 4;
        low = 0x90;
    } else if (lead >= 0xF1 && lead <= 0xF3) {
        need = 4;
    } else if (lead == 0xF4) {
        need = 4;
        high = 0x8F;
    } else {
        return -1; /* continuation byte, C0, C1 or F5..FF */
    }

    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) {
            return 0;
        }
        if (s[i] < low || s[i] > high) {
            return -i;
        }
        low = 0x80;
        high = 0xBF;
    }
    return need;
}
