/* CPython binding of the model: _core.Model (weights, tokenizer and a default
 * context), _core.Context (one more KV cache and set of buffers on the same
 * weights) and _core.kv_cache_attention (one cache layer, for kernel tests). */
#include "py_common.h"

#include <errno.h>
#include <sys/stat.h>

#include <numpy/arrayobject.h>

#include "hf_weights.h"
#include "kv_cache.h"
#include "model.h"
#include "speculative.h"

typedef struct {
    PyObject_HEAD
    tq_model *model;
    tq_kv_type type_k;
    tq_kv_type type_v;
    PyObject *tokenizer; /* the Tokenizer passed to __init__, which the model borrows; or NULL */
} ModelObject;

/* Build tq_hf_weights from the "hf_weights" argument of Model.__init__:
 * (metadata: bytes, shard paths: sequence of str, specs: sequence of tuples
 * (name, source or None, shard, to_f32, offset, values or None)), where values is
 * a 1-D float32 array. turboquant.hf_model builds it from a model directory.
 * Returns 0, or -1 with an exception set. */
static int open_hf_weights(PyObject *argument, const char *directory, tq_hf_weights **out)
{
    *out = NULL;
    PyObject *metadata = NULL;
    PyObject *shard_list = NULL;
    PyObject *spec_list = NULL;
    if (!PyArg_ParseTuple(argument, "SOO:hf_weights", &metadata, &shard_list, &spec_list)) {
        return -1;
    }
    PyObject *shards = PySequence_Fast(shard_list, "hf_weights[1] must be a sequence of shard paths");
    if (shards == NULL) {
        return -1;
    }
    PyObject *specs = PySequence_Fast(spec_list, "hf_weights[2] must be a sequence of tensor specs");
    if (specs == NULL) {
        Py_DECREF(shards);
        return -1;
    }
    const Py_ssize_t n_shards = PySequence_Fast_GET_SIZE(shards);
    const Py_ssize_t n_specs = PySequence_Fast_GET_SIZE(specs);
    const char **paths = PyMem_Calloc(n_shards > 0 ? (size_t)n_shards : 1, sizeof(char *));
    tq_hf_tensor_spec *table = PyMem_Calloc(n_specs > 0 ? (size_t)n_specs : 1, sizeof(tq_hf_tensor_spec));
    Py_buffer *views = PyMem_Calloc(n_specs > 0 ? (size_t)n_specs : 1, sizeof(Py_buffer));
    int result = -1;
    Py_ssize_t n_views = 0;
    if (paths == NULL || table == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_shards; i++) {
        paths[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(shards, i));
        if (paths[i] == NULL) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n_specs; i++) {
        PyObject *name = NULL, *source = NULL, *values = NULL;
        int shard = 0, to_f32 = 0;
        float offset = 0.0f;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(specs, i), "UOipfO:tensor spec", &name, &source, &shard,
                              &to_f32, &offset, &values)) {
            goto done;
        }
        tq_hf_tensor_spec *spec = &table[i];
        spec->name = PyUnicode_AsUTF8(name);
        spec->source = source == Py_None ? NULL : PyUnicode_AsUTF8(source);
        if (spec->name == NULL || (source != Py_None && spec->source == NULL)) {
            goto done;
        }
        spec->shard = shard;
        spec->to_f32 = to_f32;
        spec->offset = offset;
        if (values != Py_None) {
            if (PyObject_GetBuffer(values, &views[n_views], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
                goto done;
            }
            Py_buffer *view = &views[n_views++];
            if (view->itemsize != 4 || view->format == NULL || strcmp(view->format, "f") != 0) {
                PyErr_Format(PyExc_TypeError, "values of tensor %s must be a float32 array", spec->name);
                goto done;
            }
            spec->values = view->buf;
            spec->n_values = (int64_t)(view->len / 4);
        }
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_hf_weights_open(PyBytes_AS_STRING(metadata), (size_t)PyBytes_GET_SIZE(metadata), directory, paths,
                                (int)n_shards, table, (size_t)n_specs, out, &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto done;
    }
    result = 0;
done:
    for (Py_ssize_t i = 0; i < n_views; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    PyMem_Free(table);
    PyMem_Free(paths);
    Py_DECREF(specs);
    Py_DECREF(shards);
    return result;
}

/* Parse a cache type name; returns -1 with TypeError (not a str) or ValueError (unknown name). */
static int parse_cache_type(PyObject *name, const char *argument, tq_kv_type *out)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str such as 'f16', got %.100s", argument,
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    const char *text = PyUnicode_AsUTF8(name);
    if (text == NULL) {
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    if (tq_kv_type_parse(text, out, &err) != TQ_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", argument, err.message);
        return -1;
    }
    return 0;
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path",          "threads",       "cache_type_k", "cache_type_v",    "ctx",
                               "n_batch",       "kv_recent_f16", "kv_f16_layers", "exact_matmul", "kv_balance_keys",
                               "hf_weights",    "tokenizer",     "audio_token_id", "image_token_id",
                               "audio_codebook", "qjl_bits",     "thinking_qjl_bits", "think_token_id",
                               "kv_sink_f16",   "kv_norm_correction", "kv_recent_q8_0", NULL};
    PyObject *path_bytes = NULL;
    int threads = 0;
    PyObject *cache_type_k = NULL;
    PyObject *cache_type_v = NULL;
    long long ctx = 0;
    long long n_batch = 0;
    long long kv_recent_f16 = 0;
    PyObject *kv_f16_layers = NULL;
    int exact_matmul = 0;
    int kv_balance_keys = 1;
    PyObject *hf_weights = NULL;
    PyObject *tokenizer = NULL;
    int audio_token_id = -1;
    int image_token_id = -1;
    PyObject *audio_codebook_object = Py_None;
    int qjl_bits = 0, thinking_qjl_bits = 0;
    long long think_token_id = TQ_THINK_TOKEN_DEFAULT;
    long long kv_sink_f16 = 0;
    int kv_norm_correction = 0;
    int kv_recent_q8_0 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|iOOLLLOppO!OiiOiiLLpp:Model", keywords, PyUnicode_FSConverter,
                                     &path_bytes, &threads, &cache_type_k, &cache_type_v, &ctx, &n_batch,
                                     &kv_recent_f16, &kv_f16_layers, &exact_matmul, &kv_balance_keys, &PyTuple_Type,
                                     &hf_weights, &tokenizer, &audio_token_id, &image_token_id,
                                     &audio_codebook_object, &qjl_bits, &thinking_qjl_bits, &think_token_id,
                                     &kv_sink_f16, &kv_norm_correction, &kv_recent_q8_0)) {
        return -1;
    }
    if (kv_recent_f16 < 0 || kv_sink_f16 < 0) {
        Py_DECREF(path_bytes);
        PyErr_Format(PyExc_ValueError, "%s must be >= 0 positions, got %lld",
                     kv_recent_f16 < 0 ? "kv_recent_f16" : "kv_sink_f16", kv_recent_f16 < 0 ? kv_recent_f16 : kv_sink_f16);
        return -1;
    }
    /* Layer indices kept in f16: a sequence of ints, at most 4096 of them. */
    int f16_layers[4096];
    int n_f16_layers = 0;
    if (kv_f16_layers != NULL && kv_f16_layers != Py_None) {
        PyObject *sequence = PySequence_Fast(kv_f16_layers, "kv_f16_layers must be a sequence of layer indices");
        if (sequence == NULL) {
            Py_DECREF(path_bytes);
            return -1;
        }
        const Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
        for (Py_ssize_t i = 0; i < count && i < 4096; i++) {
            const long index = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i));
            if (index == -1 && PyErr_Occurred()) {
                Py_DECREF(sequence);
                Py_DECREF(path_bytes);
                PyErr_SetString(PyExc_TypeError, "kv_f16_layers must contain ints (layer indices)");
                return -1;
            }
            f16_layers[n_f16_layers++] = index < -4096 ? -4097 : (index > 4096 ? 4097 : (int)index);
        }
        Py_DECREF(sequence);
    }
    if (self->model != NULL) {
        Py_DECREF(path_bytes);
        PyErr_SetString(PyExc_RuntimeError, "Model.__init__ was already called");
        return -1;
    }
    tq_kv_type type_k = TQ_KV_F16;
    tq_kv_type type_v = TQ_KV_F16;
    if ((cache_type_k != NULL && parse_cache_type(cache_type_k, "cache_type_k", &type_k) != 0) ||
        (cache_type_v != NULL && parse_cache_type(cache_type_v, "cache_type_v", &type_v) != 0)) {
        Py_DECREF(path_bytes);
        return -1;
    }
    if (threads < 0) {
        Py_DECREF(path_bytes);
        PyErr_Format(PyExc_ValueError, "threads must be >= 0 (0 uses the OpenMP default), got %d", threads);
        return -1;
    }
    if (ctx < 0 || n_batch < 0) {
        Py_DECREF(path_bytes);
        PyErr_Format(PyExc_ValueError, "ctx (%lld) and n_batch (%lld) must be >= 0; 0 selects the default", ctx,
                     n_batch);
        return -1;
    }

    const char *path = PyBytes_AS_STRING(path_bytes);
    struct stat info;
    if (stat(path, &info) != 0) {
        /* FileNotFoundError (or PermissionError, ...) with the path, from errno. */
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        Py_DECREF(path_bytes);
        return -1;
    }

    const tq_tokenizer *external_tokenizer = NULL;
    if (tokenizer != NULL && tokenizer != Py_None) {
        external_tokenizer = tq_py_tokenizer_get(tokenizer, "tokenizer");
        if (external_tokenizer == NULL) {
            Py_DECREF(path_bytes);
            return -1;
        }
    }
    tq_placeholder_params placeholders = {.audio_token_id = audio_token_id, .image_token_id = image_token_id};
    float *audio_codebook = NULL;
    Py_ssize_t audio_codebook_count = 0;
    if (audio_codebook_object != Py_None) {
        if (tq_py_float_sequence(audio_codebook_object, "audio_codebook", &audio_codebook, &audio_codebook_count) !=
            0) {
            Py_DECREF(path_bytes);
            return -1;
        }
        placeholders.audio_codebook = audio_codebook;
        placeholders.audio_codebook_count = (size_t)audio_codebook_count;
    }
    tq_hf_weights *weights = NULL;
    if (hf_weights != NULL && open_hf_weights(hf_weights, path, &weights) != 0) {
        PyMem_Free(audio_codebook);
        Py_DECREF(path_bytes);
        return -1;
    }

    tq_model_params params = {
        .path = path,
        .threads = threads,
        .n_ctx = ctx,
        .n_batch = n_batch,
        .type_k = type_k,
        .type_v = type_v,
        .kv_recent_f16 = kv_recent_f16,
        .kv_sink_f16 = kv_sink_f16,
        .kv_f16_layers = f16_layers,
        .n_kv_f16_layers = n_f16_layers,
        .exact_matmul = exact_matmul,
        .kv_balance_keys = kv_balance_keys,
        .kv_norm_correction = kv_norm_correction,
        .kv_recent_q8_0 = kv_recent_q8_0,
        .qjl_precision = {.qjl_bits = qjl_bits, .thinking_qjl_bits = thinking_qjl_bits,
                          .think_token_id = think_token_id},
        .hf_weights = weights,
        .tokenizer = external_tokenizer,
        .placeholders = &placeholders,
    };
    tq_error err;
    tq_error_clear(&err);
    tq_model *model = NULL;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_model_create(&params, &model, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(audio_codebook); /* the model keeps its own copy */
    Py_DECREF(path_bytes);
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    self->model = model;
    self->type_k = type_k;
    self->type_v = type_v;
    if (external_tokenizer != NULL) {
        Py_INCREF(tokenizer);
        self->tokenizer = tokenizer;
    }
    return 0;
}

static void Model_dealloc(ModelObject *self)
{
    tq_model_free(self->model);
    self->model = NULL;
    Py_CLEAR(self->tokenizer); /* after the model, which borrows its C tokenizer */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(ModelObject *self)
{
    if (self->model == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialized; call Model(path, ...)");
        return -1;
    }
    return 0;
}

/* Copy a sequence of ints (list, tuple, NumPy integer array) into a new int32
 * array; ids outside int32 raise ValueError, non-integers TypeError. */
static int32_t *tokens_from_object(PyObject *object, Py_ssize_t *n_out)
{
    PyObject *sequence = PySequence_Fast(object, "tokens must be a sequence of ints or an integer array");
    if (sequence == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    if (n == 0) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "tokens is empty; pass at least one token id");
        return NULL;
    }
    int32_t *tokens = PyMem_Malloc((size_t)n * sizeof(int32_t));
    if (tokens == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *index = PyNumber_Index(items[i]);
        if (index == NULL) {
            PyErr_Format(PyExc_TypeError, "tokens[%zd] must be an int, got %.100s", i, Py_TYPE(items[i])->tp_name);
            goto fail;
        }
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (value == -1 && PyErr_Occurred()) {
            goto fail;
        }
        if (overflow != 0 || value < INT32_MIN || value > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "tokens[%zd] does not fit in int32; token ids lie in [0, n_vocab)", i);
            goto fail;
        }
        tokens[i] = (int32_t)value;
    }
    Py_DECREF(sequence);
    *n_out = n;
    return tokens;

fail:
    PyMem_Free(tokens);
    Py_DECREF(sequence);
    return NULL;
}

/* ---- Calls shared by Model (its default context) and Context ---------------- */

/* Soft embedding rows of one eval call: a C-contiguous float32 array (rows, hidden), read in
 * place; data is NULL when the caller passed None. */
typedef struct {
    Py_buffer view;
    const float *data;
    Py_ssize_t rows;
    int acquired;
} soft_view;

static void soft_release(soft_view *soft)
{
    if (soft->acquired) {
        PyBuffer_Release(&soft->view);
        soft->acquired = 0;
    }
}

/* Acquire obj as soft embedding rows of hidden floats; ValueError names the shape or dtype
 * found and the one expected. */
static int soft_acquire(PyObject *obj, int hidden, soft_view *out)
{
    memset(out, 0, sizeof(*out));
    if (obj == Py_None) {
        return 0;
    }
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "soft_embeddings must be a C-contiguous float32 array of shape (n_placeholders, %d), got "
                     "%.100s; pass numpy.ascontiguousarray(rows, dtype=numpy.float32)",
                     hidden, Py_TYPE(obj)->tp_name);
        return -1;
    }
    out->acquired = 1;
    const char *format = out->view.format != NULL ? out->view.format : "B";
    const char *code = (format[0] == '<' || format[0] == '=' || format[0] == '@') ? format + 1 : format;
    if (strcmp(code, "f") != 0 || out->view.itemsize != 4) {
        PyErr_Format(PyExc_ValueError,
                     "soft_embeddings must have dtype float32 (buffer format 'f'), got format '%s'; convert with "
                     "numpy.ascontiguousarray(rows, dtype=numpy.float32)",
                     format);
        soft_release(out);
        return -1;
    }
    if (out->view.ndim != 2 || out->view.shape[1] != hidden) {
        /* The shape as NumPy prints it: (12,) or (12, 65). */
        char shape[128] = "(";
        size_t used = 1;
        for (int i = 0; i < out->view.ndim && used < sizeof(shape); i++) {
            used += (size_t)snprintf(shape + used, sizeof(shape) - used, i == 0 ? "%zd" : ", %zd",
                                     out->view.shape[i]);
        }
        if (used < sizeof(shape)) {
            snprintf(shape + used, sizeof(shape) - used, out->view.ndim == 1 ? ",)" : ")");
        }
        PyErr_Format(PyExc_ValueError,
                     "soft_embeddings has shape %s; expected (n_placeholders, %d), one row of the model's hidden "
                     "size per placeholder position",
                     shape, hidden);
        soft_release(out);
        return -1;
    }
    out->rows = out->view.shape[0];
    out->data = out->rows > 0 ? (const float *)out->view.buf : NULL;
    return 0;
}

/* read_kv(layer, start, n): the decoded cache rows of n positions from start. */
static PyObject *context_read_kv(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"layer", "start", "n", NULL};
    int layer;
    long long start, n;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLL:read_kv", keywords, &layer, &start, &n)) {
        return NULL;
    }
    const tq_model_config *config = tq_model_get_config(tq_context_model(context));
    tq_kv_cache *cache = tq_context_kv_cache(context);
    if (layer < 0 || layer >= config->n_layers || n < 0) {
        PyErr_Format(PyExc_ValueError, "layer must be in 0 .. %d and n >= 0, got layer %d and n %lld",
                     config->n_layers - 1, layer, n);
        return NULL;
    }
    const int head_dim = tq_kv_cache_layer_head_dim(cache, layer);
    npy_intp dims[3] = {(npy_intp)n, config->n_kv_heads, head_dim};
    PyObject *keys = PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    PyObject *values = PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (keys == NULL || values == NULL) {
        Py_XDECREF(keys);
        Py_XDECREF(values);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_kv_cache_read(cache, layer, start, n, (float *)PyArray_DATA((PyArrayObject *)keys),
                              (float *)PyArray_DATA((PyArrayObject *)values), &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        Py_DECREF(keys);
        Py_DECREF(values);
        return tq_py_raise(&err);
    }
    return Py_BuildValue("(NN)", keys, values);
}

static PyObject *context_eval(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"tokens", "logits", "hidden", "soft_embeddings", NULL};
    PyObject *tokens_object;
    const char *logits_name = "last";
    int want_hidden = 0;
    PyObject *soft_object = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|s$pO:eval", keywords, &tokens_object, &logits_name,
                                     &want_hidden, &soft_object)) {
        return NULL;
    }
    tq_logits_mode mode;
    if (strcmp(logits_name, "last") == 0) {
        mode = TQ_LOGITS_LAST;
    } else if (strcmp(logits_name, "all") == 0) {
        mode = TQ_LOGITS_ALL;
    } else if (strcmp(logits_name, "none") == 0) {
        mode = TQ_LOGITS_NONE;
    } else {
        PyErr_Format(PyExc_ValueError, "logits must be 'last', 'all' or 'none', got '%s'", logits_name);
        return NULL;
    }

    const tq_model_config *config = tq_model_get_config(tq_context_model(context));
    soft_view soft;
    if (soft_acquire(soft_object, config->hidden, &soft) != 0) {
        return NULL;
    }
    Py_ssize_t n = 0;
    int32_t *tokens = tokens_from_object(tokens_object, &n);
    if (tokens == NULL) {
        soft_release(&soft);
        return NULL;
    }
    const int64_t n_past = tq_context_n_past(context);
    const int64_t n_ctx = tq_context_n_ctx(context);
    if ((int64_t)n > n_ctx - n_past) {
        PyMem_Free(tokens);
        soft_release(&soft);
        PyErr_Format(PyExc_IndexError,
                     "%lld positions already used plus %zd new tokens exceed the context of %lld; create the "
                     "model with a larger ctx or call truncate()/reset()",
                     (long long)n_past, n, (long long)n_ctx);
        return NULL;
    }

    PyObject *result = Py_None;
    float *logits = NULL;
    if (mode == TQ_LOGITS_LAST) {
        npy_intp dims[1] = {config->n_vocab};
        result = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    } else if (mode == TQ_LOGITS_ALL) {
        npy_intp dims[2] = {n, config->n_vocab};
        result = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    } else {
        Py_INCREF(result);
    }
    if (result == NULL) {
        PyMem_Free(tokens);
        soft_release(&soft);
        return NULL;
    }
    if (mode != TQ_LOGITS_NONE) {
        logits = (float *)PyArray_DATA((PyArrayObject *)result);
    }

    /* hidden=True: also the output-normed final hidden states of the same rows
     * (every row for 'none'). */
    PyObject *hidden_array = NULL;
    float *hidden = NULL;
    if (want_hidden) {
        if (mode == TQ_LOGITS_LAST) {
            npy_intp dims[1] = {config->hidden};
            hidden_array = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
        } else {
            npy_intp dims[2] = {n, config->hidden};
            hidden_array = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        }
        if (hidden_array == NULL) {
            PyMem_Free(tokens);
            soft_release(&soft);
            Py_DECREF(result);
            return NULL;
        }
        hidden = (float *)PyArray_DATA((PyArrayObject *)hidden_array);
    }

    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_context_eval_soft(context, tokens, n, soft.data, soft.rows, mode, logits, hidden, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(tokens);
    soft_release(&soft);
    if (status != TQ_OK) {
        Py_DECREF(result);
        Py_XDECREF(hidden_array);
        return tq_py_raise(&err);
    }
    if (hidden_array != NULL) {
        PyObject *pair = PyTuple_Pack(2, result, hidden_array);
        Py_DECREF(result);
        Py_DECREF(hidden_array);
        return pair;
    }
    return result;
}

static PyObject *context_truncate(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"n_past", NULL};
    long long n_past;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "L:truncate", keywords, &n_past)) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    if (tq_context_truncate(context, n_past, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *context_reset(tq_context *context)
{
    tq_error err;
    tq_error_clear(&err);
    if (tq_context_truncate(context, 0, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *context_eval_tree(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"tokens", "parents", "hidden", NULL};
    PyObject *tokens_object, *parents_object;
    int want_hidden = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|p:eval_tree", keywords, &tokens_object, &parents_object,
                                     &want_hidden)) {
        return NULL;
    }
    Py_ssize_t n = 0, n_parents = 0;
    int32_t *tokens = tokens_from_object(tokens_object, &n);
    if (tokens == NULL) {
        return NULL;
    }
    int32_t *parents = tokens_from_object(parents_object, &n_parents);
    if (parents == NULL) {
        PyMem_Free(tokens);
        return NULL;
    }
    PyObject *logits = NULL, *hidden = NULL;
    if (n_parents != n) {
        PyErr_Format(PyExc_ValueError, "parents has %zd entries but tokens has %zd; give one parent per node", n_parents,
                     n);
        goto done;
    }
    const tq_model_config *config = tq_model_get_config(tq_context_model(context));
    npy_intp logits_dims[2] = {n, config->n_vocab};
    npy_intp hidden_dims[2] = {n, config->hidden};
    logits = PyArray_SimpleNew(2, logits_dims, NPY_FLOAT32);
    if (logits == NULL || (want_hidden && (hidden = PyArray_SimpleNew(2, hidden_dims, NPY_FLOAT32)) == NULL)) {
        goto done;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    float *hidden_data = hidden != NULL ? (float *)PyArray_DATA((PyArrayObject *)hidden) : NULL;
    Py_BEGIN_ALLOW_THREADS
    status = tq_context_eval_tree(context, tokens, parents, n, (float *)PyArray_DATA((PyArrayObject *)logits),
                                  hidden_data, &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto done;
    }
    PyMem_Free(tokens);
    PyMem_Free(parents);
    if (want_hidden) {
        return Py_BuildValue("(NN)", logits, hidden);
    }
    return logits;

done:
    PyMem_Free(tokens);
    PyMem_Free(parents);
    Py_XDECREF(logits);
    Py_XDECREF(hidden);
    return NULL;
}

static PyObject *context_accept_path(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", NULL};
    PyObject *path_object;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:accept_path", keywords, &path_object)) {
        return NULL;
    }
    Py_ssize_t n = 0;
    int32_t *path = tokens_from_object(path_object, &n);
    if (path == NULL) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status = tq_context_accept_path(context, path, n, &err);
    PyMem_Free(path);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *context_heads_topk(tq_context *context, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"weight", "bias", "hidden", "top_k", "vocab", NULL};
    PyObject *weight_object, *bias_object, *hidden_object, *vocab_object = Py_None;
    int top_k;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOi|$O:heads_topk", keywords, &weight_object, &bias_object,
                                     &hidden_object, &top_k, &vocab_object)) {
        return NULL;
    }
    int vocab_ok;
    const tq_mtp_vocab *vocab = tq_py_vocab_get(vocab_object, tq_context_model(context), "vocab", &vocab_ok);
    if (!vocab_ok) {
        return NULL;
    }
    const tq_model_config *config = tq_model_get_config(tq_context_model(context));
    const Py_ssize_t d = config->hidden;
    tq_py_matrix weight, bias, hidden;
    memset(&bias, 0, sizeof(bias));
    memset(&hidden, 0, sizeof(hidden));
    PyObject *ids = NULL, *logprobs = NULL;
    if (tq_py_matrix_acquire(weight_object, "weight", d, &weight) != 0) {
        return NULL;
    }
    if (tq_py_matrix_acquire(bias_object, "bias", d, &bias) != 0 ||
        tq_py_matrix_acquire(hidden_object, "hidden", d, &hidden) != 0) {
        goto done;
    }
    const Py_ssize_t n_heads = bias.rows;
    if (weight.rows != n_heads * d || hidden.rows != 1) {
        PyErr_Format(PyExc_ValueError,
                     "weight must have n_heads * %zd rows (got %zd for %zd heads in bias) and hidden one row of %zd "
                     "(got %zd rows)",
                     d, weight.rows, n_heads, d, hidden.rows);
        goto done;
    }
    if (tq_py_check_finite(&weight, "weight") != 0 || tq_py_check_finite(&bias, "bias") != 0 ||
        tq_py_check_finite(&hidden, "hidden") != 0) {
        goto done;
    }
    if (top_k < 1 || top_k > TQ_HEADS_MAX_TOP_K) {
        PyErr_Format(PyExc_ValueError, "top_k must be in 1 .. %d, got %d", TQ_HEADS_MAX_TOP_K, top_k);
        goto done;
    }
    npy_intp dims[2] = {n_heads, top_k};
    ids = PyArray_SimpleNew(2, dims, NPY_INT32);
    logprobs = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (ids == NULL || logprobs == NULL) {
        goto done;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_context_heads_topk(context, (int)n_heads, weight.data, bias.data, vocab, hidden.data, top_k,
                                   (int32_t *)PyArray_DATA((PyArrayObject *)ids),
                                   (float *)PyArray_DATA((PyArrayObject *)logprobs), &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto done;
    }
    tq_py_matrix_release(&weight);
    tq_py_matrix_release(&bias);
    tq_py_matrix_release(&hidden);
    return Py_BuildValue("(NN)", ids, logprobs);

done:
    tq_py_matrix_release(&weight);
    tq_py_matrix_release(&bias);
    tq_py_matrix_release(&hidden);
    Py_XDECREF(ids);
    Py_XDECREF(logprobs);
    return NULL;
}

/* Add audio_token_id and image_token_id (None when unset) and audio_codebook (a tuple, empty
 * without one) to a config dict. */
static int add_placeholders(PyObject *config, const tq_placeholder_params *placeholders)
{
    const int32_t ids[2] = {placeholders->audio_token_id, placeholders->image_token_id};
    const char *names[2] = {"audio_token_id", "image_token_id"};
    for (int i = 0; i < 2; i++) {
        PyObject *value = ids[i] >= 0 ? PyLong_FromLong(ids[i]) : Py_NewRef(Py_None);
        if (value == NULL || PyDict_SetItemString(config, names[i], value) != 0) {
            Py_XDECREF(value);
            return -1;
        }
        Py_DECREF(value);
    }
    PyObject *codebook = PyTuple_New((Py_ssize_t)placeholders->audio_codebook_count);
    for (size_t i = 0; codebook != NULL && i < placeholders->audio_codebook_count; i++) {
        PyObject *entry = PyFloat_FromDouble((double)placeholders->audio_codebook[i]);
        if (entry == NULL) {
            Py_CLEAR(codebook);
            break;
        }
        PyTuple_SET_ITEM(codebook, (Py_ssize_t)i, entry);
    }
    if (codebook == NULL || PyDict_SetItemString(config, "audio_codebook", codebook) != 0) {
        Py_XDECREF(codebook);
        return -1;
    }
    Py_DECREF(codebook);
    return 0;
}

static PyObject *config_dict(const tq_model *model)
{
    const tq_model_config *c = tq_model_get_config(model);
    PyObject *config = Py_BuildValue(
        "{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:L,s:L,s:i,s:d,s:d,s:d,s:d,s:d,s:d,s:s}", "architecture", c->architecture,
        "n_layers", c->n_layers, "hidden", c->hidden, "n_heads", c->n_heads, "n_kv_heads", c->n_kv_heads, "head_dim",
        c->head_dim, "ffn", c->ffn, "vocab", c->n_vocab, "context_length", (long long)c->context_length,
        "sliding_window", (long long)c->sliding_window, "sliding_window_pattern", c->sliding_window_pattern,
        "rope_base_global", (double)c->rope_base_global, "rope_base_local", (double)c->rope_base_local,
        "rope_scale_global", (double)c->rope_scale_global, "eps", (double)c->rms_eps, "query_pre_attn_scalar",
        (double)c->query_pre_attn_scalar, "embedding_scale", (double)c->embedding_scale, "kernels",
        tq_isa_name(tq_model_isa(model)));
    /* Gemma 4 fields (see tq_model_config); global_layers lists the full-attention layers. */
    PyObject *extra = Py_BuildValue("{s:i,s:i,s:i,s:i,s:d}", "head_dim_local", c->head_dim_local,
                                    "rope_dims_global", c->rope_dims_global, "n_kv_shared_layers",
                                    c->n_kv_shared_layers, "per_layer_input", c->per_layer_input,
                                    "final_logit_softcap", (double)c->final_logit_softcap);
    PyObject *global_layers = PyList_New(0);
    for (int l = 0; global_layers != NULL && l < c->n_layers; l++) {
        if (!tq_model_layer_is_global(c, l)) {
            continue;
        }
        PyObject *index = PyLong_FromLong(l);
        if (index == NULL || PyList_Append(global_layers, index) != 0) {
            Py_CLEAR(global_layers);
        }
        Py_XDECREF(index);
    }
    if (config == NULL || extra == NULL || global_layers == NULL || PyDict_Update(config, extra) != 0 ||
        PyDict_SetItemString(config, "global_layers", global_layers) != 0) {
        Py_XDECREF(config);
        Py_XDECREF(extra);
        Py_XDECREF(global_layers);
        return NULL;
    }
    Py_DECREF(extra);
    Py_DECREF(global_layers);
    if (add_placeholders(config, tq_model_placeholders(model)) != 0) {
        Py_DECREF(config);
        return NULL;
    }
    return config;
}

/* A new wrapper per access: caching it would make a reference cycle, because
 * the wrapper keeps owner (and so the model) alive. */
static PyObject *tokenizer_wrapper(const tq_model *model, PyObject *owner)
{
    const tq_tokenizer *tok = tq_model_tokenizer(model);
    if (tok == NULL) {
        Py_RETURN_NONE;
    }
    return tq_py_tokenizer_borrow(tok, owner);
}

/* ---- Model -------------------------------------------------------------------- */

static PyObject *Model_eval(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_eval(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_read_kv(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_read_kv(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_truncate(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_truncate(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_eval_tree(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_eval_tree(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_accept_path(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_accept_path(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_heads_topk(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    return check_ready(self) != 0 ? NULL : context_heads_topk(tq_model_context(self->model), args, kwargs);
}

static PyObject *Model_reset(ModelObject *self, PyObject *Py_UNUSED(ignored))
{
    return check_ready(self) != 0 ? NULL : context_reset(tq_model_context(self->model));
}

static PyObject *Model_kv_cache_bytes(ModelObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(self) != 0) {
        return NULL;
    }
    return PyLong_FromSize_t(tq_kv_cache_bytes(tq_model_kv_cache(self->model)));
}

static PyObject *Model_kv_bytes_per_token(ModelObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(self) != 0) {
        return NULL;
    }
    return PyLong_FromSize_t(tq_kv_cache_bytes_per_token(tq_model_kv_cache(self->model)));
}

/* {1: n_1bit, 2: n_2bit}: stored positions per QJL residual precision (tq_kv_cache_qjl_positions). */
static PyObject *qjl_positions_dict(const tq_kv_cache *cache)
{
    int64_t n_1bit, n_2bit;
    tq_kv_cache_qjl_positions(cache, &n_1bit, &n_2bit);
    return Py_BuildValue("{i:L,i:L}", 1, (long long)n_1bit, 2, (long long)n_2bit);
}

static PyObject *Model_kv_cache_qjl_positions(ModelObject *self, PyObject *Py_UNUSED(ignored))
{
    return check_ready(self) != 0 ? NULL : qjl_positions_dict(tq_model_kv_cache(self->model));
}

static PyObject *Model_create_context(ModelObject *self, PyObject *args, PyObject *kwargs);

static PyObject *Model_get_config(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : config_dict(self->model);
}

static PyObject *Model_get_tokenizer(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : tokenizer_wrapper(self->model, (PyObject *)self);
}

static PyObject *Model_get_n_ctx(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyLong_FromLongLong(tq_model_n_ctx(self->model));
}

static PyObject *Model_get_n_past(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyLong_FromLongLong(tq_model_n_past(self->model));
}

static PyObject *Model_get_n_vocab(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyLong_FromLong(tq_model_get_config(self->model)->n_vocab);
}

static PyObject *Model_get_threads(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyLong_FromLong(tq_model_threads(self->model));
}

static PyObject *Model_get_kv_sink_f16(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyLong_FromLongLong(tq_model_context_params(self->model).kv_sink_f16);
}

static PyObject *Model_get_exact_moves_from(ModelObject *self, void *Py_UNUSED(closure))
{
    if (check_ready(self) != 0) {
        return NULL;
    }
    return PyLong_FromLongLong(tq_kv_cache_exact_moves_from(tq_context_kv_cache(tq_model_context(self->model))));
}

static PyObject *Model_get_cache_type_k(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyUnicode_FromString(tq_kv_type_get(self->type_k)->name);
}

static PyObject *Model_get_cache_type_v(ModelObject *self, void *Py_UNUSED(closure))
{
    return check_ready(self) != 0 ? NULL : PyUnicode_FromString(tq_kv_type_get(self->type_v)->name);
}

static PyMethodDef Model_methods[] = {
    {"eval", (PyCFunction)(void (*)(void))Model_eval, METH_VARARGS | METH_KEYWORDS,
     "eval(tokens, logits='last', *, hidden=False, soft_embeddings=None)\n\n"
     "Run tokens (ints) at positions n_past, n_past + 1, ... and append them to the KV cache.\n"
     "logits: 'last' returns float32 (n_vocab,), 'all' returns (len(tokens), n_vocab), 'none' returns None.\n"
     "hidden=True returns (logits, hidden) with the final hidden states after the output norm:\n"
     "(hidden_size,) for 'last', (len(tokens), hidden_size) for 'all' and 'none'.\n"
     "soft_embeddings: float32 (n_placeholders, hidden_size), the input embeddings of the audio and image\n"
     "placeholder positions in order, used as they are (not scaled by sqrt(hidden_size)); required when\n"
     "tokens contain placeholder ids.\n"
     "Raises IndexError when n_past + len(tokens) > n_ctx, ValueError for an empty list, an unknown id or\n"
     "soft embeddings of the wrong count, shape or dtype."},
    {"read_kv", (PyCFunction)(void (*)(void))Model_read_kv, METH_VARARGS | METH_KEYWORDS,
     "read_kv(layer, start, n) -> (keys, values)\n\n"
     "The cached rows of positions start .. start + n - 1 of layer, decoded to float32 arrays of shape\n"
     "(n, n_kv_heads, head_dim of the layer): the coded rows attention reads outside the recent f16 window."},
    {"truncate", (PyCFunction)(void (*)(void))Model_truncate, METH_VARARGS | METH_KEYWORDS,
     "truncate(n_past)\n\nForget positions >= n_past (0 <= n_past <= current n_past)."},
    {"eval_tree", (PyCFunction)(void (*)(void))Model_eval_tree, METH_VARARGS | METH_KEYWORDS,
     "eval_tree(tokens, parents, hidden=False) -> logits or (logits, hidden)\n\n"
     "Verify a draft tree in one pass: node 0 follows the cached positions, node i > 0 has parent\n"
     "parents[i] < i (parents[0] = -1) and sits at n_past + its depth; each node sees the cache and\n"
     "its ancestors. Returns float32 logits (n, n_vocab) and, with hidden=True, the output-normed\n"
     "hidden states (n, n_embd). The nodes' K/V rows wait for accept_path()."},
    {"accept_path", (PyCFunction)(void (*)(void))Model_accept_path, METH_VARARGS | METH_KEYWORDS,
     "accept_path(path)\n\nKeep nodes path[0] = 0, path[1], ... (each the parent of the next) of the last\n"
     "eval_tree(): their rows become positions n_past, n_past + 1, ...; the rest are dropped."},
    {"heads_topk", (PyCFunction)(void (*)(void))Model_heads_topk, METH_VARARGS | METH_KEYWORDS,
     "heads_topk(weight, bias, hidden, top_k, *, vocab=None) -> (ids, logprobs)\n\n"
     "Medusa-style draft heads: for head k, g = hidden + SiLU(W_k hidden + b_k), then the model's LM head\n"
     "(only the rows of vocab, a draft vocabulary from _core.mtp_vocab, when given).\n"
     "weight: float32 (n_heads * n_embd, n_embd), bias: (n_heads, n_embd), hidden: (n_embd,).\n"
     "Returns the top_k token ids per head (int32 (n_heads, top_k), best first) and their log-probabilities."},
    {"reset", (PyCFunction)Model_reset, METH_NOARGS, "reset()\n\nForget every position (same as truncate(0))."},
    {"kv_cache_bytes", (PyCFunction)Model_kv_cache_bytes, METH_NOARGS,
     "kv_cache_bytes() -> int\n\nBytes stored for the positions held: all layers, K and V, codes and scales."},
    {"kv_cache_qjl_positions", (PyCFunction)Model_kv_cache_qjl_positions, METH_NOARGS,
     "kv_cache_qjl_positions() -> dict\n\nStored positions whose +qjl rows have a 1-bit and a 2-bit QJL residual,\n"
     "as {1: count, 2: count}; both 0 when no cache side is a +qjl type."},
    {"kv_bytes_per_token", (PyCFunction)Model_kv_bytes_per_token, METH_NOARGS,
     "kv_bytes_per_token() -> int\n\nBytes one position takes in every layer, K and V."},
    {"create_context", (PyCFunction)(void (*)(void))Model_create_context, METH_VARARGS | METH_KEYWORDS,
     "create_context(threads=None, ctx=None, cache_type_k=None, cache_type_v=None) -> Context\n\n"
     "Create a Context: a KV cache and forward buffers of its own that share this model's weights.\n"
     "Arguments left at None take the value the Model was created with (threads 0: OpenMP default,\n"
     "ctx 0: the model's context length); kv_recent_f16, kv_recent_q8_0, kv_sink_f16, kv_f16_layers,\n"
     "kv_balance_keys and kv_norm_correction are always inherited.\n"
     "Different contexts may run eval() at the same time from different threads."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"config", (getter)Model_get_config, NULL, "Model configuration read from the GGUF metadata (dict).", NULL},
    {"tokenizer", (getter)Model_get_tokenizer, NULL,
     "_core.Tokenizer built from the same GGUF metadata; it shares the model's C tokenizer.", NULL},
    {"n_ctx", (getter)Model_get_n_ctx, NULL, "Positions the KV cache can hold.", NULL},
    {"n_past", (getter)Model_get_n_past, NULL, "Positions stored in the KV cache.", NULL},
    {"n_vocab", (getter)Model_get_n_vocab, NULL, "Vocabulary size (length of a logits row).", NULL},
    {"threads", (getter)Model_get_threads, NULL, "OpenMP threads per call (0: OpenMP default).", NULL},
    {"kv_sink_f16", (getter)Model_get_kv_sink_f16, NULL, "First positions a codec cache keeps in f16.", NULL},
    {"exact_moves_from", (getter)Model_get_exact_moves_from, NULL,
     "First position at which eval_tree accepts draft nodes past the root (0 unless a q8_0 recent window and an "
     "f16 sink are set).",
     NULL},
    {"cache_type_k", (getter)Model_get_cache_type_k, NULL, "Storage type of cached keys.", NULL},
    {"cache_type_v", (getter)Model_get_cache_type_v, NULL, "Storage type of cached values.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(path, threads=0, cache_type_k='f16', cache_type_v='f16', ctx=0, n_batch=0,\n"
              "      kv_recent_f16=0, kv_f16_layers=(), exact_matmul=False, qjl_bits=0, thinking_qjl_bits=0,\n"
              "      think_token_id=0, kv_sink_f16=0, kv_norm_correction=False, kv_recent_q8_0=False)\n\n"
              "Gemma 3 model from a GGUF file with a KV cache of ctx positions (0: the model's context length).\n"
              "cache_type_k and cache_type_v: 'f32', 'f16', 'q8_0', 'q4_0' or a TurboQuant codec ('tq4', 'tq3.5',\n"
              "'tq3', 'tq2.5', 'tq2', 'tq3+qjl', 'tq4+qjl', 'polar', 'polar+qjl'). With a codec type,\n"
              "kv_recent_f16 newest positions and kv_sink_f16 first positions are also kept in f16 and read from\n"
              "there, and the layers listed in kv_f16_layers (negative: from the end) store f16 rows.\n"
              "kv_recent_q8_0: keep the kv_recent_f16 copies as q8_0 rows instead (about half the bytes).\n"
              "kv_norm_correction: the MSE codec types (tq4 .. tq2) store norms that keep the decoded rows'\n"
              "length. kv_balance_keys: code keys balanced per channel (Gemma 3). n_batch: prompt micro-batch\n"
              "size (0: 512). threads: OpenMP threads per call (0: OpenMP default). exact_matmul: keep\n"
              "activations in float32 in weight products (slower; matches float references such as transformers).\n"
              "qjl_bits, thinking_qjl_bits: QJL residual bits (1 or 2; 0: 1 and 2) of +qjl cache types outside and\n"
              "while thinking; think_token_id: the token that switches thinking on (0: the model's, <|think|> for\n"
              "Gemma 4 and none for Gemma 3; -1: none).\n"
              "eval() and truncate() act on the model's default context; create_context() makes more.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* ---- Context ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    ModelObject *owner; /* strong reference: the weights must outlive the context */
    tq_context *context;
    tq_kv_type type_k;
    tq_kv_type type_v;
} ContextObject;

static void Context_dealloc(ContextObject *self)
{
    tq_context_free(self->context);
    self->context = NULL;
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Context_eval(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_eval(self->context, args, kwargs);
}

static PyObject *Context_read_kv(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_read_kv(self->context, args, kwargs);
}

static PyObject *Context_truncate(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_truncate(self->context, args, kwargs);
}

static PyObject *Context_eval_tree(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_eval_tree(self->context, args, kwargs);
}

static PyObject *Context_accept_path(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_accept_path(self->context, args, kwargs);
}

static PyObject *Context_heads_topk(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    return context_heads_topk(self->context, args, kwargs);
}

static PyObject *Context_reset(ContextObject *self, PyObject *Py_UNUSED(ignored))
{
    return context_reset(self->context);
}

static PyObject *Context_kv_cache_bytes(ContextObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(tq_kv_cache_bytes(tq_context_kv_cache(self->context)));
}

static PyObject *Context_kv_bytes_per_token(ContextObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(tq_kv_cache_bytes_per_token(tq_context_kv_cache(self->context)));
}

static PyObject *Context_kv_cache_qjl_positions(ContextObject *self, PyObject *Py_UNUSED(ignored))
{
    return qjl_positions_dict(tq_context_kv_cache(self->context));
}

static PyObject *Context_get_config(ContextObject *self, void *Py_UNUSED(closure))
{
    return config_dict(tq_context_model(self->context));
}

static PyObject *Context_get_tokenizer(ContextObject *self, void *Py_UNUSED(closure))
{
    return tokenizer_wrapper(tq_context_model(self->context), (PyObject *)self);
}

static PyObject *Context_get_model(ContextObject *self, void *Py_UNUSED(closure))
{
    Py_INCREF(self->owner);
    return (PyObject *)self->owner;
}

static PyObject *Context_get_n_ctx(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(tq_context_n_ctx(self->context));
}

static PyObject *Context_get_n_past(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(tq_context_n_past(self->context));
}

static PyObject *Context_get_n_vocab(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(tq_model_get_config(tq_context_model(self->context))->n_vocab);
}

static PyObject *Context_get_threads(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(tq_context_threads(self->context));
}

static PyObject *Context_get_kv_sink_f16(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(tq_model_context_params(tq_context_model(self->context)).kv_sink_f16);
}

static PyObject *Context_get_exact_moves_from(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(tq_kv_cache_exact_moves_from(tq_context_kv_cache(self->context)));
}

static int Context_set_threads(ContextObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "threads cannot be deleted");
        return -1;
    }
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "threads must be an int, got %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    const long threads = PyLong_AsLong(value);
    if (threads == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (threads < 0 || threads > 4096) {
        PyErr_Format(PyExc_ValueError, "threads must be between 0 (the OpenMP default) and 4096, got %ld", threads);
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    if (tq_context_set_threads(self->context, (int)threads, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    return 0;
}

static PyObject *Context_get_cache_type_k(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(tq_kv_type_get(self->type_k)->name);
}

static PyObject *Context_get_cache_type_v(ContextObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(tq_kv_type_get(self->type_v)->name);
}

static PyMethodDef Context_methods[] = {
    {"eval", (PyCFunction)(void (*)(void))Context_eval, METH_VARARGS | METH_KEYWORDS,
     "eval(tokens, logits='last', *, hidden=False, soft_embeddings=None)\n\nAs Model.eval, on this context's "
     "KV cache."},
    {"read_kv", (PyCFunction)(void (*)(void))Context_read_kv, METH_VARARGS | METH_KEYWORDS,
     "read_kv(layer, start, n) -> (keys, values)\n\nAs Model.read_kv, on this context's KV cache."},
    {"truncate", (PyCFunction)(void (*)(void))Context_truncate, METH_VARARGS | METH_KEYWORDS,
     "truncate(n_past)\n\nForget positions >= n_past (0 <= n_past <= current n_past)."},
    {"eval_tree", (PyCFunction)(void (*)(void))Context_eval_tree, METH_VARARGS | METH_KEYWORDS,
     "eval_tree(tokens, parents, hidden=False) -> logits or (logits, hidden)\n\n"
     "Verify a draft tree in one pass: node 0 follows the cached positions, node i > 0 has parent\n"
     "parents[i] < i (parents[0] = -1) and sits at n_past + its depth; each node sees the cache and\n"
     "its ancestors. Returns float32 logits (n, n_vocab) and, with hidden=True, the output-normed\n"
     "hidden states (n, n_embd). The nodes' K/V rows wait for accept_path()."},
    {"accept_path", (PyCFunction)(void (*)(void))Context_accept_path, METH_VARARGS | METH_KEYWORDS,
     "accept_path(path)\n\nKeep nodes path[0] = 0, path[1], ... (each the parent of the next) of the last\n"
     "eval_tree(): their rows become positions n_past, n_past + 1, ...; the rest are dropped."},
    {"heads_topk", (PyCFunction)(void (*)(void))Context_heads_topk, METH_VARARGS | METH_KEYWORDS,
     "heads_topk(weight, bias, hidden, top_k, *, vocab=None) -> (ids, logprobs)\n\n"
     "Medusa-style draft heads: for head k, g = hidden + SiLU(W_k hidden + b_k), then the model's LM head\n"
     "(only the rows of vocab, a draft vocabulary from _core.mtp_vocab, when given).\n"
     "weight: float32 (n_heads * n_embd, n_embd), bias: (n_heads, n_embd), hidden: (n_embd,).\n"
     "Returns the top_k token ids per head (int32 (n_heads, top_k), best first) and their log-probabilities."},
    {"reset", (PyCFunction)Context_reset, METH_NOARGS, "reset()\n\nForget every position (same as truncate(0))."},
    {"kv_cache_bytes", (PyCFunction)Context_kv_cache_bytes, METH_NOARGS,
     "kv_cache_bytes() -> int\n\nBytes stored for the positions held: all layers, K and V, codes and scales."},
    {"kv_cache_qjl_positions", (PyCFunction)Context_kv_cache_qjl_positions, METH_NOARGS,
     "kv_cache_qjl_positions() -> dict\n\nStored positions whose +qjl rows have a 1-bit and a 2-bit QJL residual,\n"
     "as {1: count, 2: count}; both 0 when no cache side is a +qjl type."},
    {"kv_bytes_per_token", (PyCFunction)Context_kv_bytes_per_token, METH_NOARGS,
     "kv_bytes_per_token() -> int\n\nBytes one position takes in every layer, K and V."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Context_getset[] = {
    {"model", (getter)Context_get_model, NULL, "The _core.Model whose weights this context uses.", NULL},
    {"config", (getter)Context_get_config, NULL, "Model configuration read from the GGUF metadata (dict).", NULL},
    {"tokenizer", (getter)Context_get_tokenizer, NULL, "_core.Tokenizer of the model.", NULL},
    {"n_ctx", (getter)Context_get_n_ctx, NULL, "Positions the KV cache can hold.", NULL},
    {"n_past", (getter)Context_get_n_past, NULL, "Positions stored in the KV cache.", NULL},
    {"n_vocab", (getter)Context_get_n_vocab, NULL, "Vocabulary size (length of a logits row).", NULL},
    {"threads", (getter)Context_get_threads, (setter)Context_set_threads,
     "OpenMP threads per call (0: OpenMP default); settable between calls.", NULL},
    {"kv_sink_f16", (getter)Context_get_kv_sink_f16, NULL, "First positions a codec cache keeps in f16.", NULL},
    {"exact_moves_from", (getter)Context_get_exact_moves_from, NULL,
     "First position at which eval_tree accepts draft nodes past the root (0 unless a q8_0 recent window and an "
     "f16 sink are set).",
     NULL},
    {"cache_type_k", (getter)Context_get_cache_type_k, NULL, "Storage type of cached keys.", NULL},
    {"cache_type_v", (getter)Context_get_cache_type_v, NULL, "Storage type of cached values.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.Context",
    .tp_basicsize = sizeof(ContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KV cache and forward buffers of one sequence, sharing the weights of a Model.\n"
              "Create one with Model.create_context(); it keeps the Model alive.",
    .tp_dealloc = (destructor)Context_dealloc,
    .tp_methods = Context_methods,
    .tp_getset = Context_getset,
};

/* Parse an optional int argument of create_context: None keeps *out. */
static int parse_optional_count(PyObject *value, const char *argument, long long *out)
{
    if (value == NULL || value == Py_None) {
        return 0;
    }
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int or None, got %.100s", argument, Py_TYPE(value)->tp_name);
        return -1;
    }
    long long parsed = PyLong_AsLongLong(value);
    if (parsed == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (parsed < 0 || parsed > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be between 0 (the default) and %d, got %lld", argument, INT32_MAX,
                     parsed);
        return -1;
    }
    *out = parsed;
    return 0;
}

static PyObject *Model_create_context(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"threads", "ctx", "cache_type_k", "cache_type_v", NULL};
    PyObject *threads_object = NULL, *ctx_object = NULL, *cache_type_k = NULL, *cache_type_v = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOOO:create_context", keywords, &threads_object, &ctx_object,
                                     &cache_type_k, &cache_type_v)) {
        return NULL;
    }
    if (check_ready(self) != 0) {
        return NULL;
    }
    tq_context_params params = tq_model_context_params(self->model);
    long long threads = params.threads;
    long long ctx = params.n_ctx;
    if (parse_optional_count(threads_object, "threads", &threads) != 0 ||
        parse_optional_count(ctx_object, "ctx", &ctx) != 0) {
        return NULL;
    }
    params.threads = (int)threads;
    params.n_ctx = ctx;
    if ((cache_type_k != NULL && cache_type_k != Py_None &&
         parse_cache_type(cache_type_k, "cache_type_k", &params.type_k) != 0) ||
        (cache_type_v != NULL && cache_type_v != Py_None &&
         parse_cache_type(cache_type_v, "cache_type_v", &params.type_v) != 0)) {
        return NULL;
    }

    ContextObject *result = PyObject_New(ContextObject, &ContextType);
    if (result == NULL) {
        return NULL;
    }
    result->context = NULL;
    Py_INCREF(self);
    result->owner = self;
    result->type_k = params.type_k;
    result->type_v = params.type_v;

    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_context_create(self->model, &params, &result->context, &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        Py_DECREF(result);
        return tq_py_raise(&err);
    }
    return (PyObject *)result;
}

/* ---- kv_cache_attention ----------------------------------------------------- */

static PyObject *core_kv_cache_attention(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"keys",    "values",  "queries",    "cache_type_k", "cache_type_v",
                               "window",  "n_batch", "splits",     "kernels",      "recent_f16",
                               "seed",    "key_scale", "key_center", "audio_positions", "audio_codebook",
                               "read_rows", "qjl_bits", "channel_order_k", "channel_order_v", "sink_f16",
                               "norm_correction", "recent_q8_0", NULL};
    PyObject *keys_object, *values_object, *queries_object;
    PyObject *key_scale_object = Py_None, *key_center_object = Py_None, *qjl_bits_object = Py_None;
    PyObject *audio_positions_object = Py_None, *audio_codebook_object = Py_None;
    PyArrayObject *audio_positions = NULL;
    float *audio_codebook = NULL;
    Py_ssize_t audio_codebook_count = 0;
    int read_rows = 0;
    PyArrayObject *key_scale = NULL, *key_center = NULL, *qjl_bits = NULL;
    PyObject *order_objects[2] = {Py_None, Py_None};
    PyArrayObject *orders[2] = {NULL, NULL};
    PyObject *cache_type_k = NULL, *cache_type_v = NULL;
    long long window = 0, n_batch = 0, recent_f16 = 0, sink_f16 = 0;
    unsigned long long seed = 0;
    int splits = 1;
    const char *kernels = "auto";
    int norm_correction = 0;
    int recent_q8_0 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOLLisLKOOOOpOOOLpp:kv_cache_attention", keywords,
                                     &keys_object, &values_object, &queries_object, &cache_type_k, &cache_type_v,
                                     &window, &n_batch, &splits, &kernels, &recent_f16, &seed, &key_scale_object,
                                     &key_center_object, &audio_positions_object, &audio_codebook_object,
                                     &read_rows, &qjl_bits_object, &order_objects[0], &order_objects[1],
                                     &sink_f16, &norm_correction, &recent_q8_0)) {
        return NULL;
    }
    if (splits < 1 || splits > 64) {
        PyErr_Format(PyExc_ValueError, "splits must be between 1 and 64, got %d", splits);
        return NULL;
    }
    tq_kv_type type_k = TQ_KV_F32, type_v = TQ_KV_F32;
    if ((cache_type_k != NULL && parse_cache_type(cache_type_k, "cache_type_k", &type_k) != 0) ||
        (cache_type_v != NULL && parse_cache_type(cache_type_v, "cache_type_v", &type_v) != 0)) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_isa isa;
    if (tq_isa_parse(kernels, &isa, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    if (window < 0 || n_batch < 0 || recent_f16 < 0 || sink_f16 < 0) {
        PyErr_Format(PyExc_ValueError,
                     "window (%lld), n_batch (%lld), recent_f16 (%lld) and sink_f16 (%lld) must be >= 0", window,
                     n_batch, recent_f16, sink_f16);
        return NULL;
    }

    tq_py_matrix keys, values, queries;
    if (tq_py_matrix_acquire(keys_object, "keys", -1, &keys) != 0) {
        return NULL;
    }
    if (tq_py_matrix_acquire(values_object, "values", keys.cols, &values) != 0) {
        tq_py_matrix_release(&keys);
        return NULL;
    }
    if (tq_py_matrix_acquire(queries_object, "queries", keys.cols, &queries) != 0) {
        tq_py_matrix_release(&keys);
        tq_py_matrix_release(&values);
        return NULL;
    }
    PyObject *result = NULL;
    tq_kv_cache *cache = NULL;
    void *scratch = NULL;
    float *partials = NULL;
    const Py_ssize_t n = keys.rows;
    const int head_dim = (int)keys.cols;
    if (values.rows != n || n == 0 || queries.rows % n != 0 || queries.rows / n > 64) {
        PyErr_Format(PyExc_ValueError,
                     "keys and values need the same nonzero number of rows and queries 1 to 64 times as many "
                     "(got %zd, %zd, %zd)",
                     keys.rows, values.rows, queries.rows);
        goto done;
    }
    const int group = (int)(queries.rows / n);
    if (tq_py_check_finite(&keys, "keys") != 0 || tq_py_check_finite(&values, "values") != 0 ||
        tq_py_check_finite(&queries, "queries") != 0) {
        goto done;
    }
    if (key_scale_object != Py_None) {
        key_scale = (PyArrayObject *)PyArray_FROMANY(key_scale_object, NPY_FLOAT32, 1, 1,
                                                     NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (key_scale == NULL) {
            goto done;
        }
        if (PyArray_SIZE(key_scale) != head_dim) {
            PyErr_Format(PyExc_ValueError, "key_scale must have head_dim=%d entries, got %zd", head_dim,
                         (Py_ssize_t)PyArray_SIZE(key_scale));
            goto done;
        }
    }
    if (key_center_object != Py_None) {
        if (key_scale == NULL) {
            PyErr_SetString(PyExc_ValueError, "key_center needs key_scale; pass ones for no scaling");
            goto done;
        }
        key_center = (PyArrayObject *)PyArray_FROMANY(key_center_object, NPY_UINT8, 1, 1,
                                                      NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (key_center == NULL) {
            goto done;
        }
        if (PyArray_SIZE(key_center) != head_dim) {
            PyErr_Format(PyExc_ValueError, "key_center must have head_dim=%d entries, got %zd", head_dim,
                         (Py_ssize_t)PyArray_SIZE(key_center));
            goto done;
        }
    }
    if (audio_positions_object != Py_None) {
        audio_positions = (PyArrayObject *)PyArray_FROMANY(audio_positions_object, NPY_UINT8, 1, 1,
                                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (audio_positions == NULL) {
            goto done;
        }
        if (PyArray_SIZE(audio_positions) != n) {
            PyErr_Format(PyExc_ValueError, "audio_positions must have one flag per position (%zd), got %zd", n,
                         (Py_ssize_t)PyArray_SIZE(audio_positions));
            goto done;
        }
    }
    if (audio_codebook_object != Py_None &&
        tq_py_float_sequence(audio_codebook_object, "audio_codebook", &audio_codebook, &audio_codebook_count) != 0) {
        goto done;
    }
    if (qjl_bits_object != Py_None) {
        qjl_bits = (PyArrayObject *)PyArray_FROMANY(qjl_bits_object, NPY_UINT8, 1, 1,
                                                    NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (qjl_bits == NULL) {
            goto done;
        }
        if (PyArray_SIZE(qjl_bits) != n) {
            PyErr_Format(PyExc_ValueError, "qjl_bits must have one entry (1 or 2) per key row (%zd), got %zd", n,
                         (Py_ssize_t)PyArray_SIZE(qjl_bits));
            goto done;
        }
    }
    for (int side = 0; side < 2; side++) {
        if (order_objects[side] == Py_None) {
            continue;
        }
        orders[side] = (PyArrayObject *)PyArray_FROMANY(order_objects[side], NPY_INT, 1, 1,
                                                        NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (orders[side] == NULL) {
            goto done;
        }
        if (PyArray_SIZE(orders[side]) != head_dim) {
            PyErr_Format(PyExc_ValueError, "channel_order_%s must have head_dim=%d entries, got %zd",
                         side == 0 ? "k" : "v", head_dim, (Py_ssize_t)PyArray_SIZE(orders[side]));
            goto done;
        }
    }
    int64_t layer_window = window;
    tq_kv_cache_config config = {
        .n_layers = 1,
        .n_kv_heads = 1,
        .head_dim = head_dim,
        .n_ctx = n,
        .n_batch = n_batch > 0 ? n_batch : n,
        .layer_window = &layer_window,
        .type_k = type_k,
        .type_v = type_v,
        .isa = isa,
        .recent_f16 = recent_f16,
        .recent_q8_0 = recent_q8_0,
        .sink_f16 = sink_f16,
        .norm_correction = norm_correction,
        .codec_seed = seed,
        .key_scale = key_scale != NULL ? (const float *)PyArray_DATA(key_scale) : NULL,
        .key_center = key_center != NULL ? (const uint8_t *)PyArray_DATA(key_center) : NULL,
        .audio_codebook = audio_codebook,
        .audio_codebook_count = (size_t)audio_codebook_count,
        .max_qjl_bits = qjl_bits != NULL ? 2 : 1,
        .channel_order_k = orders[0] != NULL ? (const int *)PyArray_DATA(orders[0]) : NULL,
        .channel_order_v = orders[1] != NULL ? (const int *)PyArray_DATA(orders[1]) : NULL,
    };
    if (tq_kv_cache_create(&config, &cache, &err) != TQ_OK) {
        tq_py_raise(&err);
        goto done;
    }
    npy_intp dims[2] = {queries.rows, head_dim};
    result = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    scratch = tq_aligned_alloc(tq_kv_cache_scratch_bytes(cache, group));
    partials = tq_aligned_alloc((size_t)splits * (size_t)group * TQ_KV_PARTIAL_FLOATS(head_dim) * sizeof(float));
    if (result == NULL || scratch == NULL || partials == NULL) {
        Py_CLEAR(result);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done;
    }
    float *out = (float *)PyArray_DATA((PyArrayObject *)result);
    /* Same order as the model: write a micro-batch, then let its queries attend. */
    const int64_t step = config.n_batch;
    for (int64_t start = 0; start < n; start += step) {
        const int64_t m = n - start < step ? n - start : step;
        if (tq_kv_cache_reserve(cache, m, &err) != TQ_OK) {
            Py_CLEAR(result);
            tq_py_raise(&err);
            goto done;
        }
        for (int64_t t = start; audio_positions != NULL && t < start + m; t++) {
            tq_kv_cache_set_audio(cache, t, ((const uint8_t *)PyArray_DATA(audio_positions))[t]);
        }
        if (qjl_bits != NULL &&
            tq_kv_cache_set_qjl_bits(cache, start, m, (const uint8_t *)PyArray_DATA(qjl_bits) + start, &err) != TQ_OK) {
            Py_CLEAR(result);
            tq_py_raise(&err);
            goto done;
        }
        tq_kv_cache_write(cache, 0, start, m, keys.data + start * head_dim, values.data + start * head_dim);
        for (int64_t t = start; t < start + m; t++) {
            const int64_t first = tq_kv_cache_first_visible(cache, 0, t);
            const int64_t span = t - first + 1;
            for (int part = 0; part < splits; part++) {
                tq_kv_cache_attend_range(cache, 0, 0, t, first + span * part / splits,
                                         first + span * (part + 1) / splits, group,
                                         queries.data + t * group * head_dim, scratch,
                                         partials + (size_t)part * group * TQ_KV_PARTIAL_FLOATS(head_dim));
            }
            tq_attention_merge(splits, group, head_dim, partials, out + t * group * head_dim);
        }
        tq_kv_cache_advance(cache, m);
    }
    if (read_rows) {
        /* Decoded rows of every position, after the last write. */
        npy_intp row_dims[2] = {n, head_dim};
        PyObject *decoded_keys = PyArray_SimpleNew(2, row_dims, NPY_FLOAT32);
        PyObject *decoded_values = PyArray_SimpleNew(2, row_dims, NPY_FLOAT32);
        if (decoded_keys == NULL || decoded_values == NULL ||
            tq_kv_cache_read(cache, 0, 0, n, (float *)PyArray_DATA((PyArrayObject *)decoded_keys),
                             (float *)PyArray_DATA((PyArrayObject *)decoded_values), &err) != TQ_OK) {
            Py_XDECREF(decoded_keys);
            Py_XDECREF(decoded_values);
            Py_CLEAR(result);
            if (!PyErr_Occurred()) {
                tq_py_raise(&err);
            }
            goto done;
        }
        PyObject *triple = Py_BuildValue("(NNN)", result, decoded_keys, decoded_values);
        result = triple;
    }

done:
    Py_XDECREF(key_scale);
    Py_XDECREF(key_center);
    Py_XDECREF(orders[0]);
    Py_XDECREF(orders[1]);
    Py_XDECREF(audio_positions);
    PyMem_Free(audio_codebook);
    Py_XDECREF(qjl_bits);
    tq_aligned_free(partials);
    tq_aligned_free(scratch);
    tq_kv_cache_free(cache);
    tq_py_matrix_release(&keys);
    tq_py_matrix_release(&values);
    tq_py_matrix_release(&queries);
    return result;
}

/* ---- kv_cache_memory ------------------------------------------------------- */

/* Copy a sequence of n_layers ints into out (PyMem_Malloc'd); -1 with an exception. */
static int int_table_from_sequence(PyObject *object, const char *argument, Py_ssize_t n_layers, int **out)
{
    char message[96];
    snprintf(message, sizeof(message), "%s must be a sequence of ints, one per layer", argument);
    PyObject *sequence = PySequence_Fast(object, message);
    if (sequence == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(sequence) != n_layers) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries; expected one per layer (%zd)", argument,
                     PySequence_Fast_GET_SIZE(sequence), n_layers);
        Py_DECREF(sequence);
        return -1;
    }
    int *table = PyMem_Malloc((size_t)(n_layers > 0 ? n_layers : 1) * sizeof(int));
    if (table == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_layers; i++) {
        const long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i));
        if ((value == -1 && PyErr_Occurred()) || value < -1 || value > (1L << 24)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s[%zd] must be an int from -1 to %ld", argument, i, 1L << 24);
            PyMem_Free(table);
            Py_DECREF(sequence);
            return -1;
        }
        table[i] = (int)value;
    }
    Py_DECREF(sequence);
    *out = table;
    return 0;
}

static PyObject *core_kv_cache_memory(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"head_dims", "windows", "kv_sources", "n_kv_heads", "positions",
                               "cache_type_k", "cache_type_v", "n_batch", "recent_f16", "max_qjl_bits",
                               "sink_f16",     "recent_q8_0", NULL};
    PyObject *head_dims_object, *windows_object, *sources_object;
    PyObject *cache_type_k = NULL, *cache_type_v = NULL;
    int n_kv_heads;
    long long positions, n_batch = 512, recent_f16 = 0, sink_f16 = 0;
    int max_qjl_bits = 1;
    int recent_q8_0 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOiL|OOLLiLp:kv_cache_memory", keywords, &head_dims_object,
                                     &windows_object, &sources_object, &n_kv_heads, &positions, &cache_type_k,
                                     &cache_type_v, &n_batch, &recent_f16, &max_qjl_bits, &sink_f16,
                                     &recent_q8_0)) {
        return NULL;
    }
    tq_kv_type type_k = TQ_KV_F16, type_v = TQ_KV_F16;
    if ((cache_type_k != NULL && parse_cache_type(cache_type_k, "cache_type_k", &type_k) != 0) ||
        (cache_type_v != NULL && parse_cache_type(cache_type_v, "cache_type_v", &type_v) != 0)) {
        return NULL;
    }
    if (positions < 1 || n_batch < 1 || n_kv_heads < 1 || recent_f16 < 0 || sink_f16 < 0) {
        PyErr_Format(PyExc_ValueError,
                     "positions (%lld), n_batch (%lld) and n_kv_heads (%d) must be >= 1, recent_f16 (%lld) and "
                     "sink_f16 (%lld) >= 0",
                     positions, n_batch, n_kv_heads, recent_f16, sink_f16);
        return NULL;
    }
    const Py_ssize_t n_layers = PySequence_Length(head_dims_object);
    if (n_layers < 0) {
        return NULL;
    }
    if (n_layers == 0 || n_layers > 4096) {
        PyErr_Format(PyExc_ValueError, "head_dims must list 1 to 4096 layers, got %zd", n_layers);
        return NULL;
    }
    int *head_dims = NULL, *windows = NULL, *sources = NULL;
    int64_t *layer_windows = NULL;
    PyObject *result = NULL;
    if (int_table_from_sequence(head_dims_object, "head_dims", n_layers, &head_dims) != 0 ||
        int_table_from_sequence(windows_object, "windows", n_layers, &windows) != 0 ||
        int_table_from_sequence(sources_object, "kv_sources", n_layers, &sources) != 0) {
        goto done;
    }
    layer_windows = PyMem_Malloc((size_t)n_layers * sizeof(int64_t));
    if (layer_windows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int max_head_dim = 0;
    for (Py_ssize_t l = 0; l < n_layers; l++) {
        layer_windows[l] = windows[l];
        max_head_dim = head_dims[l] > max_head_dim ? head_dims[l] : max_head_dim;
    }

    tq_kv_cache_config config = {
        .n_layers = (int)n_layers,
        .n_kv_heads = n_kv_heads,
        .head_dim = max_head_dim,
        .n_ctx = positions,
        .n_batch = n_batch,
        .layer_window = layer_windows,
        .type_k = type_k,
        .type_v = type_v,
        .isa = TQ_ISA_SCALAR,
        .recent_f16 = recent_f16,
        .recent_q8_0 = recent_q8_0,
        .sink_f16 = sink_f16,
        .layer_head_dim = head_dims,
        .layer_kv_source = sources,
        .max_qjl_bits = max_qjl_bits,
    };
    tq_error err;
    tq_error_clear(&err);
    tq_kv_cache *cache = NULL;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_kv_cache_create(&config, &cache, &err);
    for (int64_t held = 0; status == TQ_OK && held < positions;) {
        const int64_t step = positions - held < config.n_batch ? positions - held : config.n_batch;
        status = tq_kv_cache_reserve(cache, step, &err);
        if (status == TQ_OK) {
            tq_kv_cache_advance(cache, step);
            held += step;
        }
    }
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
    } else {
        result = PyLong_FromSize_t(tq_kv_cache_bytes(cache));
    }
    tq_kv_cache_free(cache);

done:
    PyMem_Free(head_dims);
    PyMem_Free(windows);
    PyMem_Free(sources);
    PyMem_Free(layer_windows);
    return result;
}

static PyMethodDef model_functions[] = {
    {"kv_cache_memory", (PyCFunction)(void (*)(void))core_kv_cache_memory, METH_VARARGS | METH_KEYWORDS,
     "kv_cache_memory(head_dims, windows, kv_sources, n_kv_heads, positions, cache_type_k='f16',\n"
     "                cache_type_v='f16', n_batch=512, recent_f16=0, max_qjl_bits=1, sink_f16=0,\n"
     "                recent_q8_0=False) -> int\n\n"
     "Create a KV cache with one entry per layer in head_dims (values per head), windows (sliding\n"
     "window, 0 for a global layer) and kv_sources (the layer itself, or the earlier layer whose rows\n"
     "it reads), fill positions positions n_batch at a time as the model does (rows are allocated but\n"
     "not written), and return the bytes it then stores: codes, scales, norms, recent windows (f16, or\n"
     "q8_0 with recent_q8_0=True) and f16 sinks of every layer, K and V. max_qjl_bits=2 sizes +qjl rows for a 2-bit residual and counts the\n"
     "precision byte of each position, as a model does when thinking can switch on."},
    {"kv_cache_attention", (PyCFunction)(void (*)(void))core_kv_cache_attention, METH_VARARGS | METH_KEYWORDS,
     "kv_cache_attention(keys, values, queries, cache_type_k='f32', cache_type_v='f32', window=0, n_batch=0,\n"
     "                   splits=1, kernels='auto') -> float32 array (len(queries), head_dim)\n\n"
     "Store keys and values (n, head_dim) in a one-layer, one-head KV cache. queries holds g rows per\n"
     "position (g query heads sharing the KV head, g = len(queries) / n); each query of position i gets\n"
     "softmax(q . k_j) weighted values over positions j <= i (and i - j < window when window > 0).\n"
     "Positions are written n_batch at a time as in the model (0: all at once), so a sliding window\n"
     "exercises the ring buffer; splits > 1 attends over that many position ranges and merges them.\n"
     "For codec types (tq3, ...), the newest recent_f16 positions and the first sink_f16 positions are\n"
     "read from an f16 copy (recent_q8_0=True: the recent positions from a q8_0 copy), and seed fixes\n"
     "the codec's rotation. key_scale (head_dim floats) and key_center (head_dim flags) turn on key\n"
     "balancing of a codec key side (tq_kv_cache_config.key_scale). audio_positions (n flags) marks\n"
     "positions stored with audio_codebook (tq_kv_cache_config.audio_codebook). qjl_bits (one entry of\n"
     "1 or 2 per position) writes each position of a +qjl type with that residual precision.\n"
     "norm_correction=True stores the norms of MSE codec types corrected (KVCodec.norm_correction).\n"
     "read_rows=True returns (output, keys, values) with the rows decoded from the cache after the last\n"
     "write. Exposes the cache kernels to tests."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_model(PyObject *module)
{
    import_array1(-1);
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&ContextType) < 0) {
        return -1;
    }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(module, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        return -1;
    }
    Py_INCREF(&ContextType);
    if (PyModule_AddObject(module, "Context", (PyObject *)&ContextType) < 0) {
        Py_DECREF(&ContextType);
        return -1;
    }
    return PyModule_AddFunctions(module, model_functions);
}

const struct tq_model *tq_py_model_get(PyObject *obj, const char *argument)
{
    if (PyObject_TypeCheck(obj, &ModelType)) {
        ModelObject *model = (ModelObject *)obj;
        return check_ready(model) != 0 ? NULL : model->model;
    }
    if (PyObject_TypeCheck(obj, &ContextType)) {
        ContextObject *context = (ContextObject *)obj;
        if (context->context == NULL) {
            PyErr_Format(PyExc_RuntimeError, "%s is a Context that is not initialized", argument);
            return NULL;
        }
        return tq_context_model(context->context);
    }
    PyErr_Format(PyExc_TypeError, "%s must be a turboquant._core.Model or Context, got %.100s", argument,
                 Py_TYPE(obj)->tp_name);
    return NULL;
}
