/* Binding of the KV-cache codecs: _core.KVCodec and _core.kv_attention. */
#include "py_common.h"

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <string.h>

#include "cpu.h"
#include "kv_codec.h"

typedef struct {
    PyObject_HEAD
    tq_kv_codec *codec;
    unsigned long long seed;
} KVCodecObject;

/* A read-only view of C-contiguous uint8 rows: shape (row_bytes,), (n, row_bytes) or
 * (n, n_kv_heads, row_bytes). */
typedef struct {
    Py_buffer view;
    const uint8_t *data;
    Py_ssize_t n;
    Py_ssize_t heads;
    int acquired;
} rows_view;

static int rows_acquire(PyObject *obj, const char *name, size_t row_bytes, rows_view *out)
{
    memset(out, 0, sizeof(*out));
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be a C-contiguous uint8 array of encoded rows (got %.100s); pass the output of "
                     "KVCodec.encode",
                     name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    out->acquired = 1;
    const char *format = out->view.format ? out->view.format : "B";
    if (strcmp(format, "B") != 0 && strcmp(format, "<B") != 0 && strcmp(format, "=B") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype uint8 (got buffer format '%s')", name, format);
        PyBuffer_Release(&out->view);
        out->acquired = 0;
        return -1;
    }
    const int ndim = out->view.ndim;
    if (ndim < 1 || ndim > 3 || out->view.shape[ndim - 1] != (Py_ssize_t)row_bytes) {
        PyErr_Format(PyExc_ValueError,
                     "%s must have shape (n, %zu) or (n, n_kv_heads, %zu) for this format, got %d dimensions "
                     "with last size %zd",
                     name, row_bytes, row_bytes, ndim, ndim >= 1 ? out->view.shape[ndim - 1] : (Py_ssize_t)0);
        PyBuffer_Release(&out->view);
        out->acquired = 0;
        return -1;
    }
    out->n = ndim >= 2 ? out->view.shape[0] : 1;
    out->heads = ndim == 3 ? out->view.shape[1] : 1;
    out->data = (const uint8_t *)out->view.buf;
    return 0;
}

static void rows_release(rows_view *rows)
{
    if (rows->acquired) {
        PyBuffer_Release(&rows->view);
        rows->acquired = 0;
    }
}

static int create_codec(const char *name, Py_ssize_t head_dim, unsigned long long seed, int max_qjl_bits,
                        const float *codebook, Py_ssize_t codebook_count, tq_kv_codec **out)
{
    tq_error err;
    tq_error_clear(&err);
    if (head_dim <= 0) {
        PyErr_Format(PyExc_ValueError, "head_dim must be a power of two from %d to %d, got %zd", TQ_KV_MIN_HEAD_DIM,
                     TQ_KV_MAX_HEAD_DIM, head_dim);
        return -1;
    }
    tq_isa isa;
    tq_status status = tq_isa_select(&isa, &err);
    if (status == TQ_OK) {
        status = codebook != NULL ? tq_kv_codec_create_with_codebook(name, (size_t)head_dim, seed, isa, max_qjl_bits,
                                                                     codebook, (size_t)codebook_count, out, &err)
                                  : tq_kv_codec_create_qjl(name, (size_t)head_dim, seed, isa, max_qjl_bits, out, &err);
    }
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    return 0;
}

static int KVCodec_init(KVCodecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "head_dim", "seed", "codebook", "max_qjl_bits", "norm_correction", NULL};
    const char *name;
    Py_ssize_t head_dim;
    unsigned long long seed = 0;
    PyObject *codebook_object = Py_None;
    int max_qjl_bits = 1;
    int norm_correction = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sn|KOip:KVCodec", keywords, &name, &head_dim, &seed,
                                     &codebook_object, &max_qjl_bits, &norm_correction)) {
        return -1;
    }
    float *codebook = NULL;
    Py_ssize_t codebook_count = 0;
    if (codebook_object != Py_None && tq_py_float_sequence(codebook_object, "codebook", &codebook, &codebook_count) != 0) {
        return -1;
    }
    tq_kv_codec *codec;
    const int failed = create_codec(name, head_dim, seed, max_qjl_bits, codebook, codebook_count, &codec);
    PyMem_Free(codebook);
    if (failed) {
        return -1;
    }
    tq_kv_codec_set_norm_correction(codec, norm_correction);
    tq_kv_codec_free(self->codec);
    self->codec = codec;
    self->seed = seed;
    return 0;
}

static void KVCodec_dealloc(KVCodecObject *self)
{
    tq_kv_codec_free(self->codec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(KVCodecObject *self)
{
    if (self->codec == NULL) {
        PyErr_SetString(PyExc_ValueError, "KVCodec is not initialized; call KVCodec(name, head_dim, seed)");
        return -1;
    }
    return 0;
}

/* 0 when qjl_bits is 1 or 2 and fits the codec's rows; -1 with ValueError otherwise. */
static int check_qjl_bits(KVCodecObject *self, int qjl_bits)
{
    const int max_qjl_bits = tq_kv_codec_max_qjl_bits(self->codec);
    if (qjl_bits < 1 || qjl_bits > max_qjl_bits) {
        PyErr_Format(PyExc_ValueError,
                     "qjl_bits must be 1 to %d for this codec, got %d; create it with max_qjl_bits=2 for 2-bit "
                     "residuals",
                     max_qjl_bits, qjl_bits);
        return -1;
    }
    return 0;
}

static PyObject *KVCodec_encode(KVCodecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"x", "qjl_bits", NULL};
    PyObject *arg;
    int qjl_bits = 1;
    if (check_ready(self) != 0 || !PyArg_ParseTupleAndKeywords(args, kwargs, "O|i:encode", keywords, &arg, &qjl_bits) ||
        check_qjl_bits(self, qjl_bits) != 0) {
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(self->codec);
    const size_t row_bytes = tq_kv_codec_row_bytes(self->codec);
    tq_py_matrix x;
    if (tq_py_matrix_acquire(arg, "x", (Py_ssize_t)d, &x) != 0) {
        return NULL;
    }
    npy_intp dims[2] = {x.rows, (npy_intp)row_bytes};
    PyArrayObject *rows = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (rows == NULL) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_kv_codec_encode(self->codec, qjl_bits, x.data, d, (size_t)x.rows, (uint8_t *)PyArray_DATA(rows), row_bytes,
                                &err);
    Py_END_ALLOW_THREADS
    tq_py_matrix_release(&x);
    if (status != TQ_OK) {
        Py_DECREF(rows);
        return tq_py_raise(&err);
    }
    return (PyObject *)rows;
}

static PyObject *KVCodec_decode(KVCodecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"rows", "qjl_bits", NULL};
    PyObject *arg;
    int qjl_bits = 1;
    if (check_ready(self) != 0 || !PyArg_ParseTupleAndKeywords(args, kwargs, "O|i:decode", keywords, &arg, &qjl_bits) ||
        check_qjl_bits(self, qjl_bits) != 0) {
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(self->codec);
    const size_t row_bytes = tq_kv_codec_row_bytes(self->codec);
    rows_view rows;
    if (rows_acquire(arg, "rows", row_bytes, &rows) != 0) {
        return NULL;
    }
    const size_t n = (size_t)rows.n * (size_t)rows.heads;
    npy_intp dims[2] = {(npy_intp)n, (npy_intp)d};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out == NULL) {
        rows_release(&rows);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    tq_kv_codec_decode(self->codec, qjl_bits, rows.data, row_bytes, n, (float *)PyArray_DATA(out), d);
    Py_END_ALLOW_THREADS
    rows_release(&rows);
    return (PyObject *)out;
}

static PyObject *KVCodec_rotate(KVCodecObject *self, PyObject *arg)
{
    if (check_ready(self) != 0) {
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(self->codec);
    tq_py_matrix x;
    if (tq_py_matrix_acquire(arg, "x", (Py_ssize_t)d, &x) != 0) {
        return NULL;
    }
    npy_intp dims[2] = {x.rows, (npy_intp)d};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out == NULL) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    float *result = (float *)PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < x.rows; i++) {
        tq_kv_codec_rotate(self->codec, x.data + (size_t)i * d, result + (size_t)i * d);
    }
    Py_END_ALLOW_THREADS
    tq_py_matrix_release(&x);
    return (PyObject *)out;
}

/* Prepared queries for up to TQ_KV_MAX_GROUP query rows; caller frees with PyMem_Free. */
static float *prepare_queries(tq_kv_codec *codec, const tq_py_matrix *q)
{
    const size_t query_floats = tq_kv_codec_query_floats(codec);
    float *prepared = PyMem_Calloc((size_t)q->rows * query_floats, sizeof(float));
    if (prepared == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(codec);
    for (Py_ssize_t h = 0; h < q->rows; h++) {
        tq_kv_codec_prepare_query(codec, q->data + (size_t)h * d, prepared + (size_t)h * query_floats);
    }
    return prepared;
}

static PyObject *KVCodec_scores(KVCodecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"q", "rows", "qjl_bits", NULL};
    PyObject *q_obj, *rows_obj;
    int qjl_bits = 1;
    if (check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "OO|i:scores", keywords, &q_obj, &rows_obj, &qjl_bits) ||
        check_qjl_bits(self, qjl_bits) != 0) {
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(self->codec);
    const size_t row_bytes = tq_kv_codec_row_bytes(self->codec);
    tq_py_matrix q;
    if (tq_py_matrix_acquire(q_obj, "q", (Py_ssize_t)d, &q) != 0) {
        return NULL;
    }
    if (q.rows < 1 || q.rows > TQ_KV_MAX_GROUP || tq_py_check_finite(&q, "q") != 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "q has %zd rows; scores takes 1 to %d query heads per call", q.rows,
                         TQ_KV_MAX_GROUP);
        }
        tq_py_matrix_release(&q);
        return NULL;
    }
    rows_view rows;
    if (rows_acquire(rows_obj, "rows", row_bytes, &rows) != 0) {
        tq_py_matrix_release(&q);
        return NULL;
    }
    const size_t n = (size_t)rows.n * (size_t)rows.heads;
    const int one_query = PyArray_Check(q_obj) && PyArray_NDIM((PyArrayObject *)q_obj) == 1;
    npy_intp dims[2] = {q.rows, (npy_intp)n};
    PyArrayObject *out = (PyArrayObject *)(one_query ? PyArray_SimpleNew(1, dims + 1, NPY_FLOAT32)
                                                     : PyArray_SimpleNew(2, dims, NPY_FLOAT32));
    float *prepared = out != NULL ? prepare_queries(self->codec, &q) : NULL;
    if (prepared != NULL && n > 0) {
        Py_BEGIN_ALLOW_THREADS
        tq_kv_codec_scores(self->codec, qjl_bits, prepared, (int)q.rows, rows.data, row_bytes, n, (float *)PyArray_DATA(out),
                           n);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(prepared);
    rows_release(&rows);
    tq_py_matrix_release(&q);
    if (prepared == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    return (PyObject *)out;
}

static PyObject *KVCodec_weighted_sum(KVCodecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"rows", "weights", "qjl_bits", NULL};
    PyObject *rows_obj, *weights_obj;
    int qjl_bits = 1;
    if (check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "OO|i:weighted_sum", keywords, &rows_obj, &weights_obj,
                                     &qjl_bits) ||
        check_qjl_bits(self, qjl_bits) != 0) {
        return NULL;
    }
    const size_t d = tq_kv_codec_head_dim(self->codec);
    const size_t row_bytes = tq_kv_codec_row_bytes(self->codec);
    const size_t acc_floats = tq_kv_codec_acc_floats(self->codec);
    rows_view rows;
    if (rows_acquire(rows_obj, "rows", row_bytes, &rows) != 0) {
        return NULL;
    }
    const size_t n = (size_t)rows.n * (size_t)rows.heads;
    tq_py_matrix weights;
    if (tq_py_matrix_acquire(weights_obj, "weights", (Py_ssize_t)n, &weights) != 0) {
        rows_release(&rows);
        return NULL;
    }
    if (weights.rows < 1 || weights.rows > TQ_KV_MAX_GROUP || tq_py_check_finite(&weights, "weights") != 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "weights has %zd rows; weighted_sum takes 1 to %d rows of weights",
                         weights.rows, TQ_KV_MAX_GROUP);
        }
        tq_py_matrix_release(&weights);
        rows_release(&rows);
        return NULL;
    }
    npy_intp dims[2] = {weights.rows, (npy_intp)d};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    float *acc = out != NULL ? PyMem_Calloc((size_t)weights.rows * acc_floats, sizeof(float)) : NULL;
    if (acc == NULL) {
        Py_XDECREF(out);
        tq_py_matrix_release(&weights);
        rows_release(&rows);
        return out != NULL ? PyErr_NoMemory() : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (n > 0) {
        tq_kv_codec_accumulate(self->codec, qjl_bits, rows.data, row_bytes, n, weights.data, n, (int)weights.rows, acc);
    }
    for (Py_ssize_t h = 0; h < weights.rows; h++) {
        tq_kv_codec_finish(self->codec, acc + (size_t)h * acc_floats, 1.0f, (float *)PyArray_DATA(out) + (size_t)h * d);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(acc);
    tq_py_matrix_release(&weights);
    rows_release(&rows);
    return (PyObject *)out;
}

static PyObject *KVCodec_get_name(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyUnicode_FromString(tq_kv_codec_name(self->codec));
}

static PyObject *KVCodec_get_head_dim(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyLong_FromSize_t(tq_kv_codec_head_dim(self->codec));
}

static PyObject *KVCodec_get_seed(KVCodecObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->seed);
}

static PyObject *KVCodec_get_row_bytes(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyLong_FromSize_t(tq_kv_codec_row_bytes(self->codec));
}

static PyObject *KVCodec_get_bits_per_value(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyFloat_FromDouble(tq_kv_codec_bits_per_value(self->codec));
}

static PyObject *KVCodec_get_split(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyBool_FromLong(tq_kv_codec_is_split(self->codec));
}

static PyObject *KVCodec_get_kernels(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyUnicode_FromString(tq_isa_name(tq_kv_codec_isa(self->codec)));
}

static PyObject *KVCodec_get_max_qjl_bits(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyLong_FromLong(tq_kv_codec_max_qjl_bits(self->codec));
}

static PyObject *KVCodec_get_norm_correction(KVCodecObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) != 0 ? NULL : PyBool_FromLong(tq_kv_codec_norm_correction(self->codec));
}

static PyObject *KVCodec_get_centroids(KVCodecObject *self, void *closure)
{
    (void)closure;
    if (check_ready(self) != 0) {
        return NULL;
    }
    size_t count;
    const float *centroids = tq_kv_codec_centroids(self->codec, &count);
    npy_intp dims[1] = {(npy_intp)count};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (out != NULL && count > 0) {
        memcpy(PyArray_DATA(out), centroids, count * sizeof(float));
    }
    return (PyObject *)out;
}

static PyGetSetDef KVCodec_getset[] = {
    {"name", (getter)KVCodec_get_name, NULL, "Format name, for example 'tq3'.", NULL},
    {"head_dim", (getter)KVCodec_get_head_dim, NULL, "Floats per row.", NULL},
    {"seed", (getter)KVCodec_get_seed, NULL, "Seed of the rotation and the QJL projection.", NULL},
    {"row_bytes", (getter)KVCodec_get_row_bytes, NULL, "Bytes per encoded row, norms included.", NULL},
    {"bits_per_value", (getter)KVCodec_get_bits_per_value, NULL, "8 * row_bytes / head_dim.", NULL},
    {"split", (getter)KVCodec_get_split, NULL,
     "True for tq3.5 and tq2.5: channels [0, head_dim/2) and [head_dim/2, head_dim) are coded as two vectors, "
     "each with its own norm and rotation, the first at the wider width.",
     NULL},
    {"kernels", (getter)KVCodec_get_kernels, NULL, "Kernel variant chosen at creation ('avx512', ...).", NULL},
    {"max_qjl_bits", (getter)KVCodec_get_max_qjl_bits, NULL,
     "Largest residual precision the rows hold: 2 for a +qjl codec created with max_qjl_bits=2, else 1.", NULL},
    {"norm_correction", (getter)KVCodec_get_norm_correction, NULL,
     "True when the MSE formats (tq4 .. tq2) store ||x|| / ||c|| (c: the row's centroids in the rotated domain) "
     "instead of ||x||, so decoded rows keep the input's length; other formats ignore it.",
     NULL},
    {"centroids", (getter)KVCodec_get_centroids, NULL,
     "Lloyd-Max centroids of the first coordinate group (tq) or of the pair radius (polar), in units of the "
     "rotated unit vector's coordinates (for split formats, of each half's unit vector); empty for f16.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef KVCodec_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))KVCodec_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(x, qjl_bits=1) -> uint8 array (n, row_bytes)\n\nEncode float32 rows of shape (n, head_dim) or "
     "(head_dim,); +qjl formats store a residual of qjl_bits (1 to max_qjl_bits) bits per projected entry."},
    {"decode", (PyCFunction)(void (*)(void))KVCodec_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(rows, qjl_bits=1) -> float32 array (n, head_dim)\n\nReconstruct rows encoded with qjl_bits; "
     "attention itself reads the codes."},
    {"rotate", (PyCFunction)KVCodec_rotate, METH_O,
     "rotate(x) -> float32 array (n, head_dim)\n\nRows divided by their norms and rotated by the codec's "
     "randomized Hadamard transform: the domain where the codebooks quantize (f16 does not rotate)."},
    {"scores", (PyCFunction)(void (*)(void))KVCodec_scores, METH_VARARGS | METH_KEYWORDS,
     "scores(q, rows, qjl_bits=1) -> float32 array (n_q, n), or (n,) for a 1-D q\n\n"
     "Dot products of 1 to 8 query rows with rows encoded with qjl_bits, computed on the codes."},
    {"weighted_sum", (PyCFunction)(void (*)(void))KVCodec_weighted_sum, METH_VARARGS | METH_KEYWORDS,
     "weighted_sum(rows, weights, qjl_bits=1) -> float32 array (n_w, head_dim)\n\n"
     "sum_i weights[h, i] * row i for 1 to 8 weight rows, accumulated on the codes in the rotated domain."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KVCodecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.KVCodec",
    .tp_basicsize = sizeof(KVCodecObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KVCodec(name, head_dim, seed=0, codebook=None, max_qjl_bits=1, norm_correction=False)\n\n"
              "Codec of KV-cache rows: f16, tq4, tq3.5, tq3, tq2.5, tq2, tq3+qjl, tq4+qjl, polar or polar+qjl. "
              "head_dim must be a power of two from 64 to 1024. codebook: strictly increasing centroids that "
              "replace the default Lloyd-Max codebook, in units of sqrt(head_dim) times a rotated unit-vector "
              "coordinate (16 radii >= 0 for polar, 2^bits entries for a tq format). max_qjl_bits=2 gives +qjl "
              "rows room for a 2-bit QJL residual. norm_correction=True makes the MSE formats store norms that "
              "keep the decoded rows' length (see the norm_correction attribute).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KVCodec_init,
    .tp_dealloc = (destructor)KVCodec_dealloc,
    .tp_methods = KVCodec_methods,
    .tp_getset = KVCodec_getset,
};

/* A KVCodec argument given as an object or a format name; *owned is set when the codec
 * was created here and must be freed by the caller. */
static tq_kv_codec *codec_argument(PyObject *obj, const char *name, Py_ssize_t head_dim, unsigned long long seed,
                                   tq_kv_codec **owned)
{
    *owned = NULL;
    if (PyObject_TypeCheck(obj, &KVCodecType)) {
        KVCodecObject *codec = (KVCodecObject *)obj;
        return check_ready(codec) != 0 ? NULL : codec->codec;
    }
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a format name or a KVCodec, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const char *format = PyUnicode_AsUTF8(obj);
    if (format == NULL || create_codec(format, head_dim, seed, 1, NULL, 0, owned) != 0) {
        return NULL;
    }
    return *owned;
}

static PyObject *core_kv_attention(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"q", "key_rows", "value_rows", "key_format", "value_format", "scale", "seed", NULL};
    PyObject *q_obj, *keys_obj, *values_obj, *key_format, *value_format;
    double scale;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|K:kv_attention", keywords, &q_obj, &keys_obj,
                                     &values_obj, &key_format, &value_format, &scale, &seed)) {
        return NULL;
    }

    tq_py_matrix q;
    if (tq_py_matrix_acquire(q_obj, "q", -1, &q) != 0) {
        return NULL;
    }
    PyObject *result = NULL;
    tq_kv_codec *owned_key = NULL, *owned_value = NULL;
    rows_view keys = {0}, values = {0};
    tq_kv_codec *key_codec = NULL, *value_codec = NULL;

    if (tq_py_check_finite(&q, "q") != 0) {
        goto done;
    }
    key_codec = codec_argument(key_format, "key_format", q.cols, seed, &owned_key);
    if (key_codec == NULL) {
        goto done;
    }
    value_codec = codec_argument(value_format, "value_format", q.cols, seed, &owned_value);
    if (value_codec == NULL) {
        goto done;
    }
    const size_t d = tq_kv_codec_head_dim(key_codec);
    if ((size_t)q.cols != d || tq_kv_codec_head_dim(value_codec) != d) {
        PyErr_Format(PyExc_ValueError, "q has %zd columns, but the key format has head_dim %zu and the value format %zu",
                     q.cols, d, tq_kv_codec_head_dim(value_codec));
        goto done;
    }
    if (rows_acquire(keys_obj, "key_rows", tq_kv_codec_row_bytes(key_codec), &keys) != 0 ||
        rows_acquire(values_obj, "value_rows", tq_kv_codec_row_bytes(value_codec), &values) != 0) {
        goto done;
    }
    if (keys.n != values.n || keys.heads != values.heads) {
        PyErr_Format(PyExc_ValueError,
                     "key_rows has %zd positions x %zd KV heads but value_rows has %zd x %zd; they must match",
                     keys.n, keys.heads, values.n, values.heads);
        goto done;
    }

    npy_intp dims[2] = {q.rows, (npy_intp)d};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out == NULL) {
        goto done;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_kv_attention(key_codec, value_codec, q.data, (size_t)q.rows, (size_t)keys.heads, keys.data,
                             (size_t)keys.heads * tq_kv_codec_row_bytes(key_codec), values.data,
                             (size_t)values.heads * tq_kv_codec_row_bytes(value_codec), (size_t)keys.n, (float)scale,
                             (float *)PyArray_DATA(out), &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        Py_DECREF(out);
        tq_py_raise(&err);
        goto done;
    }
    result = (PyObject *)out;

done:
    rows_release(&keys);
    rows_release(&values);
    tq_kv_codec_free(owned_key);
    tq_kv_codec_free(owned_value);
    tq_py_matrix_release(&q);
    return result;
}

static PyMethodDef kv_codec_functions[] = {
    {"kv_attention", (PyCFunction)(void (*)(void))core_kv_attention, METH_VARARGS | METH_KEYWORDS,
     "kv_attention(q, key_rows, value_rows, key_format, value_format, scale, seed=0) -> float32 (n_heads, d)\n\n"
     "softmax(scale * q k^T) v computed on encoded rows. q has shape (n_heads, head_dim); key_rows and "
     "value_rows have shape (n, row_bytes) for one KV head or (n, n_kv_heads, row_bytes). Formats are names "
     "(codecs built with seed) or KVCodec objects."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_kv_codec(PyObject *module)
{
    import_array1(-1);
    if (PyType_Ready(&KVCodecType) < 0) {
        return -1;
    }
    Py_INCREF(&KVCodecType);
    if (PyModule_AddObject(module, "KVCodec", (PyObject *)&KVCodecType) < 0) {
        Py_DECREF(&KVCodecType);
        return -1;
    }
    return PyModule_AddFunctions(module, kv_codec_functions);
}
