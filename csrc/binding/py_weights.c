/* Python binding of the GGML weight formats: dequantize, matmul, activation
 * quantization and fp16 conversion, all on NumPy arrays through the buffer protocol. */
#include "py_common.h"

#include <stdio.h>
#include <string.h>

#include "blocks.h"
#include "cpu.h"
#include "matmul_kernels.h"
#include "weights.h"

/* Create a NumPy array numpy.empty(shape, dtype) and a writable view of its data.
 * cols < 0 makes a 1-D array of rows elements. Returns NULL with an exception set. */
static PyObject *new_array(Py_ssize_t rows, Py_ssize_t cols, const char *dtype, Py_buffer *view)
{
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) {
        return NULL;
    }
    PyObject *shape = cols < 0 ? Py_BuildValue("(n)", rows) : Py_BuildValue("(nn)", rows, cols);
    PyObject *array = NULL;
    if (shape != NULL) {
        array = PyObject_CallMethod(numpy, "empty", "Os", shape, dtype);
    }
    Py_XDECREF(shape);
    Py_DECREF(numpy);
    if (array == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(array, view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) {
        Py_DECREF(array);
        return NULL;
    }
    return array;
}

/* Parse the optional kernels argument: None selects through tq_isa_select. */
static int parse_kernels(PyObject *kernels, tq_isa *isa)
{
    tq_error err;
    tq_error_clear(&err);
    if (kernels == NULL || kernels == Py_None) {
        if (tq_isa_select(isa, &err) != TQ_OK) {
            tq_py_raise(&err);
            return -1;
        }
        return 0;
    }
    if (!PyUnicode_Check(kernels)) {
        PyErr_Format(PyExc_TypeError, "kernels must be a str such as 'scalar', 'avx2' or 'avx512', or None (got %.100s)",
                     Py_TYPE(kernels)->tp_name);
        return -1;
    }
    const char *name = PyUnicode_AsUTF8(kernels);
    if (name == NULL) {
        return -1;
    }
    if (tq_isa_parse(name, isa, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    return 0;
}

/* Acquire raw weight bytes of any C-contiguous buffer and check that it contains at
 * least `needed` bytes. Returns 0, or -1 with an exception set. */
static int acquire_raw(PyObject *obj, size_t needed, const char *description, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "raw must be a C-contiguous buffer such as a uint8 NumPy array (got %.100s)",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if ((size_t)view->len < needed) {
        PyErr_Format(PyExc_ValueError, "raw has %zd bytes but %s needs %zu bytes", view->len, description, needed);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *keywords[] = {"type", "raw", "n_values", NULL};
    int type;
    PyObject *raw_obj;
    Py_ssize_t n_values;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOn:dequantize", keywords, &type, &raw_obj, &n_values)) {
        return NULL;
    }

    tq_error err;
    tq_error_clear(&err);
    size_t needed;
    if (n_values < 0) {
        PyErr_Format(PyExc_ValueError, "n_values=%zd must not be negative", n_values);
        return NULL;
    }
    if (tq_type_row_bytes(type, n_values, &needed, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }

    Py_buffer raw;
    char description[64];
    snprintf(description, sizeof(description), "%zd %s values", n_values, tq_type_name(type));
    if (acquire_raw(raw_obj, needed, description, &raw) != 0) {
        return NULL;
    }
    Py_buffer out_view;
    PyObject *out = new_array(n_values, -1, "float32", &out_view);
    if (out == NULL) {
        PyBuffer_Release(&raw);
        return NULL;
    }

    tq_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = tq_dequantize_row(type, raw.buf, (float *)out_view.buf, n_values, &err);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out_view);
    PyBuffer_Release(&raw);
    if (status != TQ_OK) {
        Py_DECREF(out);
        return tq_py_raise(&err);
    }
    return out;
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *keywords[] = {"type", "raw", "n_in", "n_out", "x", "kernels", "per_row", NULL};
    int type;
    PyObject *raw_obj;
    Py_ssize_t n_in;
    Py_ssize_t n_out;
    PyObject *x_obj;
    PyObject *kernels = Py_None;
    int per_row = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOnnO|O$p:matmul", keywords, &type, &raw_obj, &n_in, &n_out,
                                     &x_obj, &kernels, &per_row)) {
        return NULL;
    }

    tq_isa isa;
    if (parse_kernels(kernels, &isa) != 0) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    if (n_in <= 0 || n_out <= 0) {
        PyErr_Format(PyExc_ValueError, "n_in=%zd and n_out=%zd must be positive", n_in, n_out);
        return NULL;
    }
    size_t row_bytes;
    size_t needed;
    if (tq_type_row_bytes(type, n_in, &row_bytes, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    if (!tq_mul_size(row_bytes, (size_t)n_out, &needed)) {
        PyErr_Format(PyExc_ValueError, "n_out=%zd rows of %zu bytes overflow size_t", n_out, row_bytes);
        return NULL;
    }

    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", n_in, &x) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&x, "x") != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    Py_buffer raw;
    char description[96];
    snprintf(description, sizeof(description), "a %zd x %zd %s matrix", n_out, n_in, tq_type_name(type));
    if (acquire_raw(raw_obj, needed, description, &raw) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }

    const int one_d = x.view.ndim == 1;
    Py_buffer out_view;
    PyObject *out = one_d ? new_array(n_out, -1, "float32", &out_view) : new_array(x.rows, n_out, "float32", &out_view);
    if (out == NULL) {
        PyBuffer_Release(&raw);
        tq_py_matrix_release(&x);
        return NULL;
    }

    tq_weight w;
    tq_status status = tq_weight_init(&w, type, n_in, n_out, raw.buf, &err);
    if (status == TQ_OK) {
        Py_BEGIN_ALLOW_THREADS;
        status = per_row ? tq_matmul_per_row(isa, &w, x.data, (float *)out_view.buf, x.rows, &err)
                         : tq_matmul(isa, &w, x.data, (float *)out_view.buf, x.rows, &err);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&out_view);
    PyBuffer_Release(&raw);
    tq_py_matrix_release(&x);
    if (status != TQ_OK) {
        Py_DECREF(out);
        return tq_py_raise(&err);
    }
    return out;
}

/* Shared body of quantize_row_q8_0 and quantize_row_q8_K: returns the blocks of
 * every row of x as a uint8 array of shape (rows, bytes per row). */
static PyObject *quantize_rows(PyObject *args, PyObject *kwargs, int q8_K, const char *signature)
{
    static char *keywords[] = {"x", "kernels", NULL};
    PyObject *x_obj;
    PyObject *kernels = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, signature, keywords, &x_obj, &kernels)) {
        return NULL;
    }
    tq_isa isa;
    if (parse_kernels(kernels, &isa) != 0) {
        return NULL;
    }
    const tq_matmul_kernels *table = tq_matmul_kernels_for(isa);
    if (table == NULL) {
        PyErr_Format(PyExc_ValueError, "no kernels named '%s' in this build", tq_isa_name(isa));
        return NULL;
    }

    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", -1, &x) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&x, "x") != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    const int type = q8_K ? TQ_TYPE_Q8_K : TQ_TYPE_Q8_0;
    const Py_ssize_t block = q8_K ? TQ_QK_K : TQ_QK8_0;
    const size_t block_bytes = q8_K ? sizeof(tq_block_q8_K) : sizeof(tq_block_q8_0);
    if (x.cols % block != 0) {
        PyErr_Format(PyExc_ValueError, "x has %zd columns, which is not a multiple of the %s block size %zd", x.cols,
                     tq_type_name(type), block);
        tq_py_matrix_release(&x);
        return NULL;
    }
    const size_t row_bytes = (size_t)(x.cols / block) * block_bytes;

    Py_buffer out_view;
    PyObject *out = new_array(x.rows, (Py_ssize_t)row_bytes, "uint8", &out_view);
    if (out == NULL) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    const tq_quantize_row_fn quantize = q8_K ? table->quantize_row_q8_K : table->quantize_row_q8_0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t r = 0; r < x.rows; r++) {
        quantize(x.data + r * x.cols, (uint8_t *)out_view.buf + (size_t)r * row_bytes, x.cols);
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out_view);
    tq_py_matrix_release(&x);
    return out;
}

static PyObject *py_quantize_row_q8_0(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return quantize_rows(args, kwargs, 0, "O|O:quantize_row_q8_0");
}

static PyObject *py_quantize_row_q8_K(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return quantize_rows(args, kwargs, 1, "O|O:quantize_row_q8_K");
}

/* Acquire a C-contiguous 1-D buffer whose items have the given format character and size. */
static int acquire_typed(PyObject *obj, const char *name, char format, Py_ssize_t itemsize, const char *dtype,
                         Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous %s array (got %.100s)", name, dtype,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') {
        f++;
    }
    if (f[0] != format || f[1] != '\0' || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s (got buffer format '%s')", name, dtype,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_fp16_to_fp32(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer in;
    if (acquire_typed(arg, "bits", 'H', 2, "uint16", &in) != 0) {
        return NULL;
    }
    const Py_ssize_t n = in.len / 2;
    Py_buffer out_view;
    PyObject *out = new_array(n, -1, "float32", &out_view);
    if (out != NULL) {
        const tq_fp16 *src = (const tq_fp16 *)in.buf;
        float *dst = (float *)out_view.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            dst[i] = tq_fp16_to_fp32(src[i]);
        }
        PyBuffer_Release(&out_view);
    }
    PyBuffer_Release(&in);
    return out;
}

static PyObject *py_fp32_to_fp16(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer in;
    if (acquire_typed(arg, "x", 'f', 4, "float32", &in) != 0) {
        return NULL;
    }
    const Py_ssize_t n = in.len / 4;
    Py_buffer out_view;
    PyObject *out = new_array(n, -1, "uint16", &out_view);
    if (out != NULL) {
        const float *src = (const float *)in.buf;
        tq_fp16 *dst = (tq_fp16 *)out_view.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            dst[i] = tq_fp32_to_fp16(src[i]);
        }
        PyBuffer_Release(&out_view);
    }
    PyBuffer_Release(&in);
    return out;
}

static PyObject *py_ggml_type_info(PyObject *self, PyObject *arg)
{
    (void)self;
    const long type = PyLong_AsLong(arg);
    if (type == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return Py_BuildValue("{s:s,s:L,s:n,s:O}", "name", tq_type_name((int)type), "block_size",
                         (long long)tq_type_block_size((int)type), "block_bytes",
                         (Py_ssize_t)tq_type_block_bytes((int)type), "supported",
                         tq_type_supported((int)type) ? Py_True : Py_False);
}

static PyObject *py_matmul_kernel_variants(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    PyObject *names = PyList_New(0);
    if (names == NULL) {
        return NULL;
    }
    for (int i = 0; i < TQ_ISA_COUNT; i++) {
        if (!tq_isa_supported((tq_isa)i) || tq_matmul_kernels_for(i) == NULL) {
            continue;
        }
        PyObject *name = PyUnicode_FromString(tq_isa_name((tq_isa)i));
        if (name == NULL || PyList_Append(names, name) != 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return names;
}

static PyMethodDef weights_methods[] = {
    {"dequantize", (PyCFunction)(void (*)(void))py_dequantize, METH_VARARGS | METH_KEYWORDS,
     "dequantize(type, raw, n_values) -> numpy.ndarray[float32]\n\n"
     "Dequantize the first n_values values of raw, a buffer of blocks of GGML type id `type`."},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(type, raw, n_in, n_out, x, kernels=None, *, per_row=False) -> numpy.ndarray[float32]\n\n"
     "Compute x @ W.T for a GGML weight W of n_out rows of n_in values stored in raw.\n"
     "x is float32 of shape (n_tokens, n_in) or (n_in,); the result has shape (n_tokens, n_out)\n"
     "or (n_out,). kernels forces a variant ('scalar', 'avx2', 'avx512', 'neon', 'auto');\n"
     "None uses TURBOQUANT_KERNELS or the best one for this CPU. per_row=True computes each\n"
     "token's row bit for bit as a one-token call does (the path of draft-tree verification)."},
    {"quantize_row_q8_0", (PyCFunction)(void (*)(void))py_quantize_row_q8_0, METH_VARARGS | METH_KEYWORDS,
     "quantize_row_q8_0(x, kernels=None) -> numpy.ndarray[uint8]\n\n"
     "Quantize each row of x to Q8_0 blocks, as matmul does with activations."},
    {"quantize_row_q8_K", (PyCFunction)(void (*)(void))py_quantize_row_q8_K, METH_VARARGS | METH_KEYWORDS,
     "quantize_row_q8_K(x, kernels=None) -> numpy.ndarray[uint8]\n\n"
     "Quantize each row of x to Q8_K blocks, as matmul does with activations for K-quant weights."},
    {"fp16_to_fp32", py_fp16_to_fp32, METH_O,
     "fp16_to_fp32(bits) -> numpy.ndarray[float32]\n\nConvert uint16 binary16 bit patterns to float32."},
    {"fp32_to_fp16", py_fp32_to_fp16, METH_O,
     "fp32_to_fp16(x) -> numpy.ndarray[uint16]\n\nConvert float32 to binary16 bit patterns, rounding to nearest even."},
    {"ggml_type_info", py_ggml_type_info, METH_O,
     "ggml_type_info(type) -> dict\n\nName, block size, block bytes and support of a GGML type id."},
    {"matmul_kernel_variants", py_matmul_kernel_variants, METH_NOARGS,
     "matmul_kernel_variants() -> list[str]\n\nKernel variants with matmul kernels in this build that this CPU can run."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_weights(PyObject *module)
{
    return PyModule_AddFunctions(module, weights_methods);
}
