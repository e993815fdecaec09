#include "py_common.h"

int tq_py_init_qjl_polar(PyObject *module)
{
    (void)module;
    return 0;
}
