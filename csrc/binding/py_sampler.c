#include "py_common.h"

int tq_py_init_sampler(PyObject *module)
{
    (void)module;
    return 0;
}
