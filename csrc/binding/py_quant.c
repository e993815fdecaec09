#include "py_common.h"

int tq_py_init_quant(PyObject *module)
{
    (void)module;
    return 0;
}
