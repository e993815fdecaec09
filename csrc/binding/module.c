/* Entry point of the extension turboquant._core: module creation and build information. */
#include "py_common.h"

#include <omp.h>
#include <yaml.h>

#include "cpu.h"

static PyObject *core_build_info(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;

    tq_error err;
    tq_error_clear(&err);
    tq_isa selected;
    if (tq_isa_select(&selected, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }

    PyObject *supported = PyList_New(0);
    if (supported == NULL) {
        return NULL;
    }
    for (int i = 0; i < TQ_ISA_COUNT; i++) {
        if (tq_isa_supported((tq_isa)i)) {
            PyObject *name = PyUnicode_FromString(tq_isa_name((tq_isa)i));
            if (name == NULL || PyList_Append(supported, name) != 0) {
                Py_XDECREF(name);
                Py_DECREF(supported);
                return NULL;
            }
            Py_DECREF(name);
        }
    }

    return Py_BuildValue("{s:s,s:s,s:N,s:i,s:i,s:s}", "kernels", tq_isa_name(selected), "best_kernels",
                         tq_isa_name(tq_isa_best()), "supported_kernels", supported, "openmp_threads",
                         omp_get_max_threads(), "openmp_version", _OPENMP, "libyaml_version",
                         yaml_get_version_string());
}

static PyMethodDef core_methods[] = {
    {"build_info", core_build_info, METH_NOARGS,
     "build_info() -> dict\n\nKernel variants, OpenMP threads and libyaml version of this build."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "turboquant._core", "C core of turboquant.", -1, core_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) {
        return NULL;
    }
    if (tq_py_init_quant(module) != 0 || tq_py_init_qjl_polar(module) != 0 || tq_py_init_gguf(module) != 0 ||
        tq_py_init_weights(module) != 0 || tq_py_init_tokenizer(module) != 0 || tq_py_init_model(module) != 0 ||
        tq_py_init_sampler(module) != 0 || tq_py_init_kv_codec(module) != 0 || tq_py_init_config(module) != 0 ||
        tq_py_init_safetensors(module) != 0 || tq_py_init_mtp(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
