#include "py_common.h"

int tq_py_init_weights(PyObject *module)
{
    (void)module;
    return 0;
}
