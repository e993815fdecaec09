/* Strict UTF-8 scanning (RFC 3629): no overlong forms, no surrogates, nothing
 * above U+10FFFF. Invalid input splits into "maximal subparts" as the Unicode
 * Standard (chapter 3, U+FFFD substitution) recommends, which is also what
 * Python's bytes.decode("utf-8", "replace") does. */
#ifndef TQ_UTF8_H
#define TQ_UTF8_H

#include <stddef.h>

/* Scan the character at s[0 .. n), n >= 1. Returns its length (1 to 4) when it
 * is valid and complete; 0 when s[0 .. n) is a valid but incomplete start of a
 * character; -k when the first k bytes form an invalid maximal subpart, which
 * one U+FFFD replaces. */
int tq_utf8_scan(const unsigned char *s, size_t n);

#endif /* TQ_UTF8_H */
