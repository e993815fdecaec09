#include "py_common.h"

int tq_py_init_tokenizer(PyObject *module)
{
    (void)module;
    return 0;
}
