/* CPython binding of the quantizer module: rotations, Lloyd-Max codebooks and the
 * TurboQuant quantizers. Outputs are written into NumPy arrays that the Python
 * layer (turboquant/quantizers.py) allocates, so no NumPy C API is needed here. */
#include "py_common.h"

#include <string.h>

#include "codebook.h"
#include "cpu.h"
#include "rotation.h"

/* A writable C-contiguous buffer of exactly `count` float32 values. */
static int acquire_float_output(PyObject *obj, const char *name, Py_ssize_t count, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a writable C-contiguous float32 array (got %.100s)", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    if (strcmp(format, "f") != 0 || view->itemsize != 4 || view->len != count * 4) {
        PyErr_Format(PyExc_ValueError, "%s must be a float32 array of %zd values (got format '%s', %zd bytes)", name,
                     count, view->format ? view->format : "B", view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* ---- codebooks ---------------------------------------------------------- */

static PyObject *py_lloyd_max_codebook(PyObject *self, PyObject *args)
{
    (void)self;
    int density, dim, bits;
    PyObject *out_obj;
    if (!PyArg_ParseTuple(args, "iiiO:lloyd_max_codebook", &density, &dim, &bits, &out_obj)) {
        return NULL;
    }
    if (bits < 1 || bits > TQ_CODEBOOK_MAX_BITS) {
        PyErr_Format(PyExc_ValueError, "bits must be in 1..%d, got %d", TQ_CODEBOOK_MAX_BITS, bits);
        return NULL;
    }
    Py_buffer out;
    if (acquire_float_output(out_obj, "out", (Py_ssize_t)1 << bits, &out) != 0) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    double mse = 0.0;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_codebook_lloyd_max((tq_density)density, dim, bits, (float *)out.buf, &mse, &err);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    return PyFloat_FromDouble(mse);
}

static PyObject *py_fit_codebook(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *samples_obj, *out_obj;
    int bits;
    if (!PyArg_ParseTuple(args, "OiO:fit_codebook", &samples_obj, &bits, &out_obj)) {
        return NULL;
    }
    if (bits < 1 || bits > TQ_CODEBOOK_MAX_BITS) {
        PyErr_Format(PyExc_ValueError, "bits must be in 1..%d, got %d", TQ_CODEBOOK_MAX_BITS, bits);
        return NULL;
    }
    tq_py_matrix samples;
    if (tq_py_matrix_acquire(samples_obj, "samples", -1, &samples) != 0) {
        return NULL;
    }
    Py_buffer out;
    if (acquire_float_output(out_obj, "out", (Py_ssize_t)1 << bits, &out) != 0) {
        tq_py_matrix_release(&samples);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    double mse = 0.0;
    tq_status status;
    const size_t n = (size_t)samples.rows * (size_t)samples.cols;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_codebook_fit(samples.data, n, bits, (float *)out.buf, &mse, &err);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    tq_py_matrix_release(&samples);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    return PyFloat_FromDouble(mse);
}

/* ---- Rotation ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD tq_rotation *rot;
    unsigned long long seed;
} RotationObject;

static int Rotation_init(RotationObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"dim", "seed", NULL};
    int dim;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|K:Rotation", keywords, &dim, &seed)) {
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_isa isa;
    if (tq_isa_select(&isa, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_rotation *rot = NULL;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_rotation_create(dim, (uint64_t)seed, isa, &rot, &err);
    Py_END_ALLOW_THREADS;
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_rotation_free(self->rot);
    self->rot = rot;
    self->seed = seed;
    return 0;
}

static void Rotation_dealloc(RotationObject *self)
{
    tq_rotation_free(self->rot);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *rotation_apply(RotationObject *self, PyObject *args, int inverse)
{
    if (self->rot == NULL) {
        PyErr_SetString(PyExc_ValueError, "Rotation is not initialised");
        return NULL;
    }
    PyObject *x_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OO", &x_obj, &out_obj)) {
        return NULL;
    }
    const int dim = tq_rotation_dim(self->rot);
    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", dim, &x) != 0) {
        return NULL;
    }
    Py_buffer out;
    if (acquire_float_output(out_obj, "out", x.rows * dim, &out) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    const tq_rotation *rot = self->rot;
    const Py_ssize_t rows = x.rows;
    const float *src = x.data;
    float *dst = (float *)out.buf;
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel for schedule(static)
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (inverse) {
            tq_rotation_inverse(rot, src + (size_t)r * dim, dst + (size_t)r * dim);
        } else {
            tq_rotation_forward(rot, src + (size_t)r * dim, dst + (size_t)r * dim);
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    tq_py_matrix_release(&x);
    Py_RETURN_NONE;
}

static PyObject *Rotation_forward(RotationObject *self, PyObject *args)
{
    return rotation_apply(self, args, 0);
}

static PyObject *Rotation_inverse(RotationObject *self, PyObject *args)
{
    return rotation_apply(self, args, 1);
}

static PyObject *Rotation_get_dim(RotationObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->rot ? tq_rotation_dim(self->rot) : 0);
}

static PyObject *Rotation_get_is_hadamard(RotationObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->rot ? tq_rotation_is_hadamard(self->rot) : 0);
}

static PyMethodDef Rotation_methods[] = {
    {"forward", (PyCFunction)Rotation_forward, METH_VARARGS,
     "forward(x, out)\n\nWrite R x for each row of the float32 (n, dim) array x into out."},
    {"inverse", (PyCFunction)Rotation_inverse, METH_VARARGS,
     "inverse(y, out)\n\nWrite R^T y for each row of the float32 (n, dim) array y into out."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Rotation_getset[] = {
    {"dim", (getter)Rotation_get_dim, NULL, "Dimension of the rotated vectors.", NULL},
    {"is_hadamard", (getter)Rotation_get_is_hadamard, NULL,
     "True for the randomized Hadamard transform (power-of-two dim), False for a dense matrix.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RotationType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.Rotation",
    .tp_basicsize = sizeof(RotationObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Rotation(dim, seed=0)\n\nSeeded random orthogonal rotation (see csrc/rotation.h).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rotation_init,
    .tp_dealloc = (destructor)Rotation_dealloc,
    .tp_methods = Rotation_methods,
    .tp_getset = Rotation_getset,
};

static PyMethodDef quant_functions[] = {
    {"lloyd_max_codebook", py_lloyd_max_codebook, METH_VARARGS,
     "lloyd_max_codebook(density, dim, bits, out) -> mse\n\nWrite the Lloyd-Max centroids into out."},
    {"fit_codebook", py_fit_codebook, METH_VARARGS,
     "fit_codebook(samples, bits, out) -> mse\n\nWrite empirical Lloyd-Max centroids of samples into out."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_quant(PyObject *module)
{
    if (PyType_Ready(&RotationType) != 0) {
        return -1;
    }
    Py_INCREF(&RotationType);
    if (PyModule_AddObject(module, "Rotation", (PyObject *)&RotationType) != 0) {
        Py_DECREF(&RotationType);
        return -1;
    }
    return PyModule_AddFunctions(module, quant_functions);
}
