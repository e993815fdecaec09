/* Binding of the safetensors reader (placeholder until the reader lands). */
#include "py_common.h"

int tq_py_init_safetensors(PyObject *module)
{
    (void)module;
    return 0;
}
