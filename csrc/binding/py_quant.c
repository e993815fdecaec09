/* CPython binding of the quantizer module: rotations, Lloyd-Max codebooks and the
 * TurboQuant quantizers. Outputs are written into NumPy arrays that the Python
 * layer (turboquant/quantizers.py) allocates, so no NumPy C API is needed here. */
#include "py_common.h"

#include <string.h>

#include "codebook.h"
#include "cpu.h"
#include "rotation.h"
#include "turboquant.h"

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

/* ---- TurboQuant ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD tq_turboquant *quantizer;
    tq_isa isa;
} TurboQuantObject;

/* Read an optional codebook argument of exactly `levels` float32 values. */
static int acquire_codebook(PyObject *obj, const char *name, int levels, tq_py_matrix *out)
{
    if (obj == Py_None) {
        memset(out, 0, sizeof(*out));
        return 0;
    }
    if (tq_py_matrix_acquire(obj, name, -1, out) != 0) {
        return -1;
    }
    if (out->rows * out->cols != levels) {
        PyErr_Format(PyExc_ValueError, "%s must contain %d centroids, got %zd", name, levels, out->rows * out->cols);
        tq_py_matrix_release(out);
        return -1;
    }
    return 0;
}

static int TurboQuant_init(TurboQuantObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"kind", "dim", "bits_x2", "seed", "codebook_high", "codebook_low", NULL};
    int kind, dim, bits_x2;
    unsigned long long seed = 0;
    PyObject *high_obj = Py_None, *low_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iii|KOO:TurboQuant", keywords, &kind, &dim, &bits_x2, &seed,
                                     &high_obj, &low_obj)) {
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_turboquant_layout layout;
    if (tq_turboquant_layout_get((tq_turboquant_kind)kind, dim, bits_x2, &layout, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_isa isa;
    if (tq_isa_select(&isa, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_py_matrix high, low;
    if (acquire_codebook(high_obj, "codebook_high", layout.bits_high ? 1 << layout.bits_high : 0, &high) != 0) {
        return -1;
    }
    if (acquire_codebook(low_obj, "codebook_low", 1 << layout.bits_low, &low) != 0) {
        tq_py_matrix_release(&high);
        return -1;
    }
    tq_turboquant *quantizer = NULL;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_turboquant_create((tq_turboquant_kind)kind, dim, bits_x2, (uint64_t)seed, high.data, low.data, isa,
                                  &quantizer, &err);
    Py_END_ALLOW_THREADS;
    tq_py_matrix_release(&high);
    tq_py_matrix_release(&low);
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_turboquant_free(self->quantizer);
    self->quantizer = quantizer;
    self->isa = isa;
    return 0;
}

static void TurboQuant_dealloc(TurboQuantObject *self)
{
    tq_turboquant_free(self->quantizer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(TurboQuantObject *self)
{
    if (self->quantizer == NULL) {
        PyErr_SetString(PyExc_ValueError, "TurboQuant is not initialised");
        return -1;
    }
    return 0;
}

/* A read-only view of the codes of n rows: exactly n * row_bytes bytes. */
static int acquire_codes(PyObject *obj, Py_ssize_t n, size_t row_bytes, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "codes must be a contiguous bytes-like object (got %.100s)",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (n < 0 || (size_t)n > SIZE_MAX / row_bytes || (size_t)view->len != (size_t)n * row_bytes) {
        PyErr_Format(PyExc_ValueError, "codes of %zd rows must be %zu bytes, got %zd", n, (size_t)n * row_bytes,
                     view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *TurboQuant_encode(TurboQuantObject *self, PyObject *args)
{
    PyObject *x_obj, *out_obj;
    if (check_ready(self) != 0 || !PyArg_ParseTuple(args, "OO:encode", &x_obj, &out_obj)) {
        return NULL;
    }
    const tq_turboquant_layout *layout = tq_turboquant_get_layout(self->quantizer);
    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", layout->dim, &x) != 0) {
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    if ((size_t)out.len != (size_t)x.rows * layout->row_bytes) {
        PyErr_Format(PyExc_ValueError, "out must be %zu bytes for %zd rows, got %zd", (size_t)x.rows * layout->row_bytes,
                     x.rows, out.len);
        PyBuffer_Release(&out);
        tq_py_matrix_release(&x);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_turboquant_encode(self->quantizer, x.data, (size_t)x.rows, (uint8_t *)out.buf, &err);
    Py_END_ALLOW_THREADS;
    /* The core rejects rows with a non-finite norm, which NaN and infinity cause.
     * Only on that error path is the input scanned, to name the first bad value. */
    int named = 0;
    if (status == TQ_ERR_INVALID) {
        named = tq_py_check_finite(&x, "x") != 0;
    }
    PyBuffer_Release(&out);
    tq_py_matrix_release(&x);
    if (named) {
        return NULL;
    }
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *TurboQuant_decode(TurboQuantObject *self, PyObject *args)
{
    PyObject *codes_obj, *out_obj;
    Py_ssize_t n;
    if (check_ready(self) != 0 || !PyArg_ParseTuple(args, "OnO:decode", &codes_obj, &n, &out_obj)) {
        return NULL;
    }
    const tq_turboquant_layout *layout = tq_turboquant_get_layout(self->quantizer);
    Py_buffer codes;
    if (acquire_codes(codes_obj, n, layout->row_bytes, &codes) != 0) {
        return NULL;
    }
    Py_buffer out;
    if (acquire_float_output(out_obj, "out", n * layout->dim, &out) != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_turboquant_decode(self->quantizer, (const uint8_t *)codes.buf, (size_t)n, (float *)out.buf, &err);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    PyBuffer_Release(&codes);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *TurboQuant_inner_product(TurboQuantObject *self, PyObject *args)
{
    PyObject *codes_obj, *queries_obj, *out_obj;
    Py_ssize_t n;
    if (check_ready(self) != 0 ||
        !PyArg_ParseTuple(args, "OnOO:inner_product", &codes_obj, &n, &queries_obj, &out_obj)) {
        return NULL;
    }
    const tq_turboquant_layout *layout = tq_turboquant_get_layout(self->quantizer);
    Py_buffer codes;
    if (acquire_codes(codes_obj, n, layout->row_bytes, &codes) != 0) {
        return NULL;
    }
    tq_py_matrix queries;
    if (tq_py_matrix_acquire(queries_obj, "queries", layout->dim, &queries) != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (tq_py_check_finite(&queries, "queries") != 0) {
        tq_py_matrix_release(&queries);
        PyBuffer_Release(&codes);
        return NULL;
    }
    Py_buffer out;
    if (acquire_float_output(out_obj, "out", queries.rows * n, &out) != 0) {
        tq_py_matrix_release(&queries);
        PyBuffer_Release(&codes);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_turboquant_inner_product(self->quantizer, (const uint8_t *)codes.buf, (size_t)n, queries.data,
                                         (size_t)queries.rows, (float *)out.buf, &err);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    tq_py_matrix_release(&queries);
    PyBuffer_Release(&codes);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *layout_dict(const tq_turboquant_layout *layout)
{
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:n,s:n,s:n,s:n,s:n}", "dim", layout->dim, "dim_high", layout->dim_high,
                         "bits_high", layout->bits_high, "bits_low", layout->bits_low, "high_bytes",
                         (Py_ssize_t)layout->high_bytes, "low_bytes", (Py_ssize_t)layout->low_bytes, "sign_bytes",
                         (Py_ssize_t)layout->sign_bytes, "norm_offset", (Py_ssize_t)layout->norm_offset, "row_bytes",
                         (Py_ssize_t)layout->row_bytes);
}

static PyObject *TurboQuant_get_layout(TurboQuantObject *self, void *closure)
{
    (void)closure;
    if (check_ready(self) != 0) {
        return NULL;
    }
    return layout_dict(tq_turboquant_get_layout(self->quantizer));
}

static PyObject *TurboQuant_get_kernels(TurboQuantObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(tq_isa_name(self->isa));
}

static PyObject *py_turboquant_layout(PyObject *self, PyObject *args)
{
    (void)self;
    int kind, dim, bits_x2;
    if (!PyArg_ParseTuple(args, "iii:turboquant_layout", &kind, &dim, &bits_x2)) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_turboquant_layout layout;
    if (tq_turboquant_layout_get((tq_turboquant_kind)kind, dim, bits_x2, &layout, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    return layout_dict(&layout);
}

static PyMethodDef TurboQuant_methods[] = {
    {"encode", (PyCFunction)TurboQuant_encode, METH_VARARGS,
     "encode(x, out)\n\nQuantize the float32 (n, dim) rows of x into the writable buffer out (n * row_bytes)."},
    {"decode", (PyCFunction)TurboQuant_decode, METH_VARARGS,
     "decode(codes, n, out)\n\nReconstruct n rows from codes into the float32 array out of n * dim values."},
    {"inner_product", (PyCFunction)TurboQuant_inner_product, METH_VARARGS,
     "inner_product(codes, n, queries, out)\n\nWrite the estimates of <query j, row i> into out[j * n + i]."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef TurboQuant_getset[] = {
    {"layout", (getter)TurboQuant_get_layout, NULL, "Code layout of one row, as a dict.", NULL},
    {"kernels", (getter)TurboQuant_get_kernels, NULL, "Kernel variant chosen when the quantizer was created.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TurboQuantType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.TurboQuant",
    .tp_basicsize = sizeof(TurboQuantObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TurboQuant(kind, dim, bits_x2, seed=0, codebook_high=None, codebook_low=None)\n\n"
              "TurboQuant quantizer (see csrc/turboquant.h); kind 0 is MSE, 1 is Prod.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TurboQuant_init,
    .tp_dealloc = (destructor)TurboQuant_dealloc,
    .tp_methods = TurboQuant_methods,
    .tp_getset = TurboQuant_getset,
};

static PyMethodDef quant_functions[] = {
    {"lloyd_max_codebook", py_lloyd_max_codebook, METH_VARARGS,
     "lloyd_max_codebook(density, dim, bits, out) -> mse\n\nWrite the Lloyd-Max centroids into out."},
    {"fit_codebook", py_fit_codebook, METH_VARARGS,
     "fit_codebook(samples, bits, out) -> mse\n\nWrite empirical Lloyd-Max centroids of samples into out."},
    {"turboquant_layout", py_turboquant_layout, METH_VARARGS,
     "turboquant_layout(kind, dim, bits_x2) -> dict\n\nCode layout of one row without creating a quantizer."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_quant(PyObject *module)
{
    if (PyType_Ready(&RotationType) != 0 || PyType_Ready(&TurboQuantType) != 0) {
        return -1;
    }
    Py_INCREF(&RotationType);
    if (PyModule_AddObject(module, "Rotation", (PyObject *)&RotationType) != 0) {
        Py_DECREF(&RotationType);
        return -1;
    }
    Py_INCREF(&TurboQuantType);
    if (PyModule_AddObject(module, "TurboQuant", (PyObject *)&TurboQuantType) != 0) {
        Py_DECREF(&TurboQuantType);
        return -1;
    }
    return PyModule_AddFunctions(module, quant_functions);
}
