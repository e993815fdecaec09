/* Python types turboquant._core.Tokenizer and turboquant._core.StreamDecoder. */
#include "py_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

typedef struct {
    PyObject_HEAD
    tq_tokenizer *tok;
    PyObject *owner; /* when set, tok belongs to owner (a Model) and is not freed here */
} TokenizerObject;

typedef struct {
    PyObject_HEAD
    TokenizerObject *tokenizer; /* strong reference */
    tq_detok_stream stream;
    int render_special;
    char *buffer; /* output buffer of buffer_size bytes for one push */
    size_t buffer_size;
} StreamDecoderObject;

static PyTypeObject TokenizerType;

/* ------------------------------------------------------------ helpers */

/* Acquire obj as a C-contiguous 1-D buffer of 4-byte items whose format is one
 * of formats (struct module codes). Returns 0, or -1 with TypeError set. */
static int acquire_vector(PyObject *obj, const char *name, const char *dtype, const char *const *formats,
                          Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D %s array, got %.100s. Pass numpy.asarray(%s, dtype=numpy.%s)",
                     name, dtype, Py_TYPE(obj)->tp_name, name, dtype);
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    int format_ok = 0;
    for (size_t i = 0; formats[i] != NULL; i++) {
        if (strcmp(format, formats[i]) == 0) {
            format_ok = 1;
        }
    }
    if (!format_ok || view->itemsize != 4) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s (got buffer format '%s')", name, dtype,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-D, got %d dimensions", name, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Acquire obj as a C-contiguous (n, 2) int32 array of merge pairs. Returns 0,
 * or -1 with TypeError or ValueError set. */
static int acquire_merges(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "merges must be an (n, 2) int32 array of token ids, got %.100s. Pass "
                     "numpy.asarray(merges, dtype=numpy.int32)",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    if ((strcmp(format, "i") != 0 && strcmp(format, "l") != 0) || view->itemsize != 4) {
        PyErr_Format(PyExc_TypeError, "merges must have dtype int32 (got buffer format '%s')",
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim != 2 || view->shape[1] != 2) {
        PyErr_Format(PyExc_ValueError, "merges must have shape (n, 2), one (left id, right id) row per merge; got %d "
                     "dimensions", view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Convert an optional Python int (None means absent) to a token id in
 * [-1, INT32_MAX]. Returns 0, or -1 with an exception set. */
static int parse_optional_id(PyObject *obj, const char *name, int32_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = -1;
        return 0;
    }
    long long value = PyLong_AsLongLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < -1 || value > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s=%lld is not a valid token id. Use None or -1 when it is absent", name,
                     value);
        return -1;
    }
    *out = (int32_t)value;
    return 0;
}

/* Convert a Python integer to a token id checked against the vocabulary. */
static int parse_token_id(const tq_tokenizer *tok, PyObject *obj, int32_t *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || value < 0 || value >= tq_tokenizer_n_vocab(tok)) {
        PyErr_Format(PyExc_ValueError, "token id %S is outside the vocabulary [0, %d)", obj,
                     (int)tq_tokenizer_n_vocab(tok));
        return -1;
    }
    *out = (int32_t)value;
    return 0;
}

/* ------------------------------------------------------------ Tokenizer */

static PyObject *Tokenizer_wrap(PyTypeObject *type, tq_tokenizer *tok)
{
    TokenizerObject *self = (TokenizerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        tq_tokenizer_free(tok);
        return NULL;
    }
    self->tok = tok;
    return (PyObject *)self;
}

static int Tokenizer_init(TokenizerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"pieces", "scores", "types", "bos_id", "eos_id", "unk_id", "pad_id",
                               "add_bos", "add_space_prefix", "merges", "byte_fallback", "ignore_merges",
                               "split_newlines", NULL};
    PyObject *pieces_obj = NULL;
    PyObject *scores_obj = Py_None;
    PyObject *types_obj = Py_None;
    PyObject *bos_obj = Py_None;
    PyObject *eos_obj = Py_None;
    PyObject *unk_obj = Py_None;
    PyObject *pad_obj = Py_None;
    PyObject *merges_obj = Py_None;
    int add_bos = 0;
    int add_space_prefix = 0;
    int byte_fallback = 1;
    int ignore_merges = 0;
    int split_newlines = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO$OOOOppOppi:Tokenizer", keywords, &pieces_obj, &scores_obj,
                                     &types_obj, &bos_obj, &eos_obj, &unk_obj, &pad_obj, &add_bos,
                                     &add_space_prefix, &merges_obj, &byte_fallback, &ignore_merges,
                                     &split_newlines)) {
        return -1;
    }
    if (self->owner != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Tokenizer belongs to a Model and cannot be re-initialized");
        return -1;
    }

    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.add_bos = add_bos;
    spec.add_space_prefix = add_space_prefix;
    spec.byte_fallback = byte_fallback;
    spec.ignore_merges = ignore_merges;
    spec.split_newlines = split_newlines;
    if (parse_optional_id(bos_obj, "bos_id", &spec.bos_id) != 0 ||
        parse_optional_id(eos_obj, "eos_id", &spec.eos_id) != 0 ||
        parse_optional_id(unk_obj, "unk_id", &spec.unk_id) != 0 ||
        parse_optional_id(pad_obj, "pad_id", &spec.pad_id) != 0) {
        return -1;
    }

    if (PyUnicode_Check(pieces_obj) || PyBytes_Check(pieces_obj)) {
        PyErr_SetString(PyExc_TypeError, "pieces must be a list of bytes or str, not a single string");
        return -1;
    }
    PyObject *pieces = PySequence_Fast(pieces_obj, "pieces must be a list of bytes or str");
    if (pieces == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(pieces);
    if (n <= 0 || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "pieces has %zd entries, but a vocabulary needs 1 to %d", n, (int)INT32_MAX);
        Py_DECREF(pieces);
        return -1;
    }

    int status = -1;
    Py_buffer scores_view = {0};
    Py_buffer types_view = {0};
    Py_buffer merges_view = {0};
    int have_scores = 0;
    int have_types = 0;
    int have_merges = 0;
    const char **texts = PyMem_Calloc((size_t)n, sizeof(char *));
    uint64_t *lens = PyMem_Calloc((size_t)n, sizeof(uint64_t));
    if (texts == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(pieces, i);
        Py_ssize_t len = 0;
        const char *data = NULL;
        if (PyBytes_Check(item)) {
            data = PyBytes_AS_STRING(item);
            len = PyBytes_GET_SIZE(item);
        } else if (PyUnicode_Check(item)) {
            /* The UTF-8 form is cached in the str object, which pieces keeps alive. */
            data = PyUnicode_AsUTF8AndSize(item, &len);
            if (data == NULL) {
                goto done;
            }
        } else {
            PyErr_Format(PyExc_TypeError, "pieces[%zd] must be bytes or str, not %.100s", i, Py_TYPE(item)->tp_name);
            goto done;
        }
        texts[i] = data;
        lens[i] = (uint64_t)len;
    }

    static const char *const float_formats[] = {"f", NULL};
    static const char *const int_formats[] = {"i", "l", NULL};
    if (scores_obj != Py_None) {
        if (acquire_vector(scores_obj, "scores", "float32", float_formats, &scores_view) != 0) {
            goto done;
        }
        have_scores = 1;
        if (scores_view.shape[0] != n) {
            PyErr_Format(PyExc_ValueError, "scores has %zd entries but pieces has %zd. Give one score per piece",
                         scores_view.shape[0], n);
            goto done;
        }
        spec.scores = (const float *)scores_view.buf;
    }
    if (types_obj != Py_None) {
        if (acquire_vector(types_obj, "types", "int32", int_formats, &types_view) != 0) {
            goto done;
        }
        have_types = 1;
        if (types_view.shape[0] != n) {
            PyErr_Format(PyExc_ValueError, "types has %zd entries but pieces has %zd. Give one token type per piece",
                         types_view.shape[0], n);
            goto done;
        }
        spec.types = (const int32_t *)types_view.buf;
    }

    if (merges_obj != Py_None) {
        if (acquire_merges(merges_obj, &merges_view) != 0) {
            goto done;
        }
        have_merges = 1;
        spec.model = TQ_TOKENIZER_BPE;
        spec.n_merges = (int64_t)merges_view.shape[0];
        spec.merge_ids = (const int32_t *)merges_view.buf;
    }

    spec.n_vocab = (int32_t)n;
    spec.pieces = texts;
    spec.piece_lens = lens;
    tq_error err;
    tq_error_clear(&err);
    tq_tokenizer *tok = NULL;
    tq_status rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tq_tokenizer_create(&spec, &tok, &err);
    Py_END_ALLOW_THREADS
    if (rc != TQ_OK) {
        tq_py_raise(&err);
        goto done;
    }
    tq_tokenizer_free(self->tok);
    self->tok = tok;
    status = 0;

done:
    if (have_scores) {
        PyBuffer_Release(&scores_view);
    }
    if (have_types) {
        PyBuffer_Release(&types_view);
    }
    if (have_merges) {
        PyBuffer_Release(&merges_view);
    }
    PyMem_Free(texts);
    PyMem_Free(lens);
    Py_DECREF(pieces);
    return status;
}

static void Tokenizer_dealloc(TokenizerObject *self)
{
    if (self->owner != NULL) {
        Py_CLEAR(self->owner);
    } else {
        tq_tokenizer_free(self->tok);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Tokenizer_check_ready(TokenizerObject *self)
{
    if (self->tok == NULL) {
        PyErr_SetString(PyExc_ValueError, "Tokenizer is not initialized. Call Tokenizer(pieces, ...) or Tokenizer.from_gguf(path)");
        return -1;
    }
    return 0;
}

static PyObject *Tokenizer_from_gguf(PyObject *cls, PyObject *args)
{
    PyObject *path_obj = NULL;
    if (!PyArg_ParseTuple(args, "O&:from_gguf", PyUnicode_FSConverter, &path_obj)) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_gguf *gguf = NULL;
    tq_tokenizer *tok = NULL;
    tq_status rc;
    int open_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    errno = 0;
    rc = tq_gguf_open(PyBytes_AS_STRING(path_obj), &gguf, &err);
    open_errno = errno;
    if (rc == TQ_OK) {
        rc = tq_tokenizer_create_from_gguf(gguf, &tok, &err);
    }
    tq_gguf_close(gguf);
    Py_END_ALLOW_THREADS
    if (rc == TQ_ERR_IO && open_errno != 0) {
        /* OSError(errno, message, filename) builds the matching subclass, such as FileNotFoundError. */
        PyObject *filename = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_obj));
        PyObject *exc = filename ? PyObject_CallFunction(PyExc_OSError, "isO", open_errno, err.message, filename) : NULL;
        Py_XDECREF(filename);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        Py_DECREF(path_obj);
        return NULL;
    }
    Py_DECREF(path_obj);
    if (rc != TQ_OK) {
        return tq_py_raise(&err);
    }
    return Tokenizer_wrap((PyTypeObject *)cls, tok);
}

static PyObject *Tokenizer_encode(TokenizerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"text", "add_bos", "special", NULL};
    PyObject *text_obj = NULL;
    PyObject *add_bos_obj = Py_None;
    int special = 1;
    if (Tokenizer_check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|Op:encode", keywords, &text_obj, &add_bos_obj, &special)) {
        return NULL;
    }
    if (!PyUnicode_Check(text_obj)) {
        PyErr_Format(PyExc_TypeError, "text must be str, not %.100s. Decode bytes first", Py_TYPE(text_obj)->tp_name);
        return NULL;
    }
    int add_bos = -1;
    if (add_bos_obj != Py_None) {
        add_bos = PyObject_IsTrue(add_bos_obj);
        if (add_bos < 0) {
            return NULL;
        }
    }
    Py_ssize_t len = 0;
    const char *text = PyUnicode_AsUTF8AndSize(text_obj, &len);
    if (text == NULL) {
        return NULL; /* lone surrogates raise UnicodeEncodeError, a ValueError subclass */
    }

    tq_error err;
    tq_error_clear(&err);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    tq_status rc;
    /* text stays valid without the GIL because str objects are immutable and
     * the argument tuple keeps a reference for the whole call. */
    Py_BEGIN_ALLOW_THREADS
    rc = tq_tokenizer_encode(self->tok, text, (size_t)len, add_bos, special, &ids, &n_ids, &err);
    Py_END_ALLOW_THREADS
    if (rc != TQ_OK) {
        return tq_py_raise(&err);
    }
    PyObject *list = PyList_New((Py_ssize_t)n_ids);
    if (list == NULL) {
        free(ids);
        return NULL;
    }
    for (size_t i = 0; i < n_ids; i++) {
        PyObject *item = PyLong_FromLong(ids[i]);
        if (item == NULL) {
            Py_DECREF(list);
            free(ids);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    free(ids);
    return list;
}

/* Decode ids to raw bytes (which may hold invalid UTF-8). */
static PyObject *decode_to_bytes(TokenizerObject *self, PyObject *ids_obj, int skip_special)
{
    if (PyUnicode_Check(ids_obj) || PyBytes_Check(ids_obj)) {
        PyErr_Format(PyExc_TypeError, "ids must be a sequence of int, not %.100s", Py_TYPE(ids_obj)->tp_name);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(ids_obj, "ids must be a sequence of int");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *ids = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (ids == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_token_id(self->tok, PySequence_Fast_GET_ITEM(seq, i), &ids[i]) != 0) {
            PyMem_Free(ids);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);

    tq_error err;
    tq_error_clear(&err);
    char *out = NULL;
    size_t out_len = 0;
    tq_status rc = tq_tokenizer_decode(self->tok, ids, (size_t)n, !skip_special, &out, &out_len, &err);
    PyMem_Free(ids);
    if (rc != TQ_OK) {
        return tq_py_raise(&err);
    }
    PyObject *result = PyBytes_FromStringAndSize(out, (Py_ssize_t)out_len);
    free(out);
    return result;
}

static PyObject *Tokenizer_decode(TokenizerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ids", "skip_special", NULL};
    PyObject *ids_obj = NULL;
    int skip_special = 1;
    if (Tokenizer_check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:decode", keywords, &ids_obj, &skip_special)) {
        return NULL;
    }
    PyObject *raw = decode_to_bytes(self, ids_obj, skip_special);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), "replace");
    Py_DECREF(raw);
    return text;
}

static PyObject *Tokenizer_decode_bytes(TokenizerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ids", "skip_special", NULL};
    PyObject *ids_obj = NULL;
    int skip_special = 1;
    if (Tokenizer_check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:decode_bytes", keywords, &ids_obj, &skip_special)) {
        return NULL;
    }
    return decode_to_bytes(self, ids_obj, skip_special);
}

static PyObject *Tokenizer_piece(TokenizerObject *self, PyObject *arg)
{
    int32_t id;
    if (Tokenizer_check_ready(self) != 0 || parse_token_id(self->tok, arg, &id) != 0) {
        return NULL;
    }
    int64_t len = tq_tokenizer_piece_text(self->tok, id, NULL, 0);
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (result != NULL) {
        tq_tokenizer_piece_text(self->tok, id, PyBytes_AS_STRING(result), (size_t)len);
    }
    return result;
}

static PyObject *Tokenizer_piece_bytes(TokenizerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"id", "skip_special", NULL};
    PyObject *id_obj = NULL;
    int skip_special = 1;
    int32_t id;
    if (Tokenizer_check_ready(self) != 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:piece_bytes", keywords, &id_obj, &skip_special) ||
        parse_token_id(self->tok, id_obj, &id) != 0) {
        return NULL;
    }
    int64_t len = tq_tokenizer_piece_bytes(self->tok, id, !skip_special, NULL, 0);
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (result != NULL) {
        tq_tokenizer_piece_bytes(self->tok, id, !skip_special, PyBytes_AS_STRING(result), (size_t)len);
    }
    return result;
}

static PyObject *Tokenizer_token_type(TokenizerObject *self, PyObject *arg)
{
    int32_t id;
    if (Tokenizer_check_ready(self) != 0 || parse_token_id(self->tok, arg, &id) != 0) {
        return NULL;
    }
    return PyLong_FromLong(tq_tokenizer_token_type(self->tok, id));
}

static PyObject *Tokenizer_score(TokenizerObject *self, PyObject *arg)
{
    int32_t id;
    if (Tokenizer_check_ready(self) != 0 || parse_token_id(self->tok, arg, &id) != 0) {
        return NULL;
    }
    return PyFloat_FromDouble(tq_tokenizer_score(self->tok, id));
}

static PyObject *Tokenizer_find(TokenizerObject *self, PyObject *arg)
{
    if (Tokenizer_check_ready(self) != 0) {
        return NULL;
    }
    const char *data;
    Py_ssize_t len;
    if (PyBytes_Check(arg)) {
        data = PyBytes_AS_STRING(arg);
        len = PyBytes_GET_SIZE(arg);
    } else if (PyUnicode_Check(arg)) {
        data = PyUnicode_AsUTF8AndSize(arg, &len);
        if (data == NULL) {
            return NULL;
        }
    } else {
        PyErr_Format(PyExc_TypeError, "piece must be bytes or str, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    int32_t id = tq_tokenizer_find(self->tok, data, (size_t)len);
    if (id < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(id);
}

static PyObject *optional_id(int32_t id)
{
    if (id < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(id);
}

static PyObject *Tokenizer_get_n_vocab(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : PyLong_FromLong(tq_tokenizer_n_vocab(self->tok));
}

static PyObject *Tokenizer_get_bos_id(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : optional_id(tq_tokenizer_bos(self->tok));
}

static PyObject *Tokenizer_get_eos_id(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : optional_id(tq_tokenizer_eos(self->tok));
}

static PyObject *Tokenizer_get_unk_id(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : optional_id(tq_tokenizer_unk(self->tok));
}

static PyObject *Tokenizer_get_pad_id(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : optional_id(tq_tokenizer_pad(self->tok));
}

static PyObject *Tokenizer_get_add_bos(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : PyBool_FromLong(tq_tokenizer_add_bos(self->tok));
}

static PyObject *Tokenizer_get_kind(TokenizerObject *self, void *closure)
{
    (void)closure;
    if (Tokenizer_check_ready(self)) {
        return NULL;
    }
    return PyUnicode_FromString(tq_tokenizer_model_kind(self->tok) == TQ_TOKENIZER_BPE ? "bpe" : "sentencepiece");
}

static PyObject *Tokenizer_get_n_merges(TokenizerObject *self, void *closure)
{
    (void)closure;
    return Tokenizer_check_ready(self) ? NULL : PyLong_FromLongLong((long long)tq_tokenizer_n_merges(self->tok));
}

static Py_ssize_t Tokenizer_len(TokenizerObject *self)
{
    return Tokenizer_check_ready(self) ? -1 : (Py_ssize_t)tq_tokenizer_n_vocab(self->tok);
}

static PyMethodDef Tokenizer_methods[] = {
    {"from_gguf", (PyCFunction)Tokenizer_from_gguf, METH_VARARGS | METH_CLASS,
     "from_gguf(path) -> Tokenizer\n\nBuild the tokenizer from the tokenizer.ggml.* metadata of a GGUF file."},
    {"encode", (PyCFunction)(void (*)(void))Tokenizer_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text, add_bos=None, special=True) -> list[int]\n\n"
     "Encode a str. add_bos=None uses the vocabulary's default. special=True maps control pieces written in the\n"
     "text (such as '<start_of_turn>') to their ids; special=False encodes them as plain text."},
    {"decode", (PyCFunction)(void (*)(void))Tokenizer_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(ids, skip_special=True) -> str\n\n"
     "Decode token ids. Control tokens decode to '' unless skip_special=False; invalid UTF-8 becomes U+FFFD."},
    {"decode_bytes", (PyCFunction)(void (*)(void))Tokenizer_decode_bytes, METH_VARARGS | METH_KEYWORDS,
     "decode_bytes(ids, skip_special=True) -> bytes\n\nDecode token ids to raw bytes, without UTF-8 checks."},
    {"piece", (PyCFunction)Tokenizer_piece, METH_O,
     "piece(id) -> bytes\n\nThe piece text of id as stored in the vocabulary, such as b'\\xe2\\x96\\x81the' or "
     "b'<0x41>'."},
    {"piece_bytes", (PyCFunction)(void (*)(void))Tokenizer_piece_bytes, METH_VARARGS | METH_KEYWORDS,
     "piece_bytes(id, skip_special=True) -> bytes\n\nThe bytes id decodes to: U+2581 as a space, <0xXX> as one byte."},
    {"token_type", (PyCFunction)Tokenizer_token_type, METH_O,
     "token_type(id) -> int\n\nSentencePiece token type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, "
     "6 byte."},
    {"score", (PyCFunction)Tokenizer_score, METH_O, "score(id) -> float\n\nThe SentencePiece merge score of id."},
    {"find", (PyCFunction)Tokenizer_find, METH_O,
     "find(piece) -> int | None\n\nThe id of the piece with exactly this text (bytes or str), or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tokenizer_getset[] = {
    {"n_vocab", (getter)Tokenizer_get_n_vocab, NULL, "Number of pieces in the vocabulary.", NULL},
    {"bos_id", (getter)Tokenizer_get_bos_id, NULL, "Id of the beginning-of-sequence token, or None.", NULL},
    {"eos_id", (getter)Tokenizer_get_eos_id, NULL, "Id of the end-of-sequence token, or None.", NULL},
    {"unk_id", (getter)Tokenizer_get_unk_id, NULL, "Id of the unknown token, or None.", NULL},
    {"pad_id", (getter)Tokenizer_get_pad_id, NULL, "Id of the padding token, or None.", NULL},
    {"add_bos", (getter)Tokenizer_get_add_bos, NULL, "Whether encode() adds BOS when add_bos is None.", NULL},
    {"kind", (getter)Tokenizer_get_kind, NULL,
     "'sentencepiece' (merges by piece score) or 'bpe' (merges by rank in the merge list).", NULL},
    {"n_merges", (getter)Tokenizer_get_n_merges, NULL, "Number of merge rules (0 for SentencePiece).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Tokenizer_as_sequence = {
    .sq_length = (lenfunc)Tokenizer_len,
};

static PyTypeObject TokenizerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.Tokenizer",
    .tp_basicsize = sizeof(TokenizerObject),
    .tp_dealloc = (destructor)Tokenizer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Tokenizer(pieces, scores=None, types=None, *, bos_id=None, eos_id=None, unk_id=None, pad_id=None,\n"
              "          add_bos=False, add_space_prefix=False, merges=None, byte_fallback=True,\n"
              "          ignore_merges=False, split_newlines=0)\n\n"
              "Without merges: SentencePiece tokenizer with score-ordered BPE merges and byte fallback (GGUF\n"
              "vocabulary type 'llama', as used by Gemma 3). With merges, an (n, 2) int32 array of (left id,\n"
              "right id) rows in rank order: BPE with ranked merges (GGUF type 'gemma4', Hugging Face BPE).\n"
              "pieces: list of bytes or str; scores: float32 array; types: int32 array of token types (default\n"
              "all normal). byte_fallback, ignore_merges and split_newlines apply to ranked BPE only.\n"
              "split_newlines: 0 merges each text fragment whole, 1 merges runs of newlines and runs of other\n"
              "characters separately, 2 does the same and keeps a newline run that is a piece whole (llama.cpp).",
    .tp_methods = Tokenizer_methods,
    .tp_getset = Tokenizer_getset,
    .tp_as_sequence = &Tokenizer_as_sequence,
    .tp_init = (initproc)Tokenizer_init,
    .tp_new = PyType_GenericNew,
};

/* -------------------------------------------------------- StreamDecoder */

static int StreamDecoder_init(StreamDecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"tokenizer", "skip_special", NULL};
    PyObject *tokenizer = NULL;
    int skip_special = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!|p:StreamDecoder", keywords, &TokenizerType, &tokenizer,
                                     &skip_special)) {
        return -1;
    }
    if (Tokenizer_check_ready((TokenizerObject *)tokenizer) != 0) {
        return -1;
    }
    /* Every input byte yields at most 3 output bytes (one U+FFFD), and at most
     * 3 bytes wait from the previous push. */
    size_t size = 3 * (tq_tokenizer_max_piece_len(((TokenizerObject *)tokenizer)->tok) + 3);
    char *buffer = PyMem_Malloc(size);
    if (buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->buffer);
    self->buffer = buffer;
    self->buffer_size = size;
    Py_INCREF(tokenizer);
    Py_XSETREF(self->tokenizer, (TokenizerObject *)tokenizer);
    self->render_special = !skip_special;
    tq_detok_stream_init(&self->stream);
    return 0;
}

static void StreamDecoder_dealloc(StreamDecoderObject *self)
{
    Py_XDECREF(self->tokenizer);
    PyMem_Free(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int StreamDecoder_check_ready(StreamDecoderObject *self)
{
    if (self->tokenizer == NULL || self->buffer == NULL) {
        PyErr_SetString(PyExc_ValueError, "StreamDecoder is not initialized. Call StreamDecoder(tokenizer)");
        return -1;
    }
    return 0;
}

static PyObject *StreamDecoder_push(StreamDecoderObject *self, PyObject *arg)
{
    int32_t id;
    if (StreamDecoder_check_ready(self) != 0 || parse_token_id(self->tokenizer->tok, arg, &id) != 0) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    size_t out_len = 0;
    if (tq_detok_stream_push(self->tokenizer->tok, &self->stream, id, self->render_special, self->buffer,
                             self->buffer_size, &out_len, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    return PyUnicode_DecodeUTF8(self->buffer, (Py_ssize_t)out_len, "strict");
}

static PyObject *StreamDecoder_flush(StreamDecoderObject *self, PyObject *unused)
{
    (void)unused;
    if (StreamDecoder_check_ready(self) != 0) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    size_t out_len = 0;
    if (tq_detok_stream_flush(&self->stream, self->buffer, self->buffer_size, &out_len, &err) != TQ_OK) {
        return tq_py_raise(&err);
    }
    return PyUnicode_DecodeUTF8(self->buffer, (Py_ssize_t)out_len, "strict");
}

static PyObject *StreamDecoder_get_pending(StreamDecoderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->stream.n_pending);
}

static PyMethodDef StreamDecoder_methods[] = {
    {"push", (PyCFunction)StreamDecoder_push, METH_O,
     "push(id) -> str\n\nAdd one token and return the text it completes: whole characters only, '' while a\n"
     "character is still incomplete. Invalid UTF-8 comes out as U+FFFD once it is known to be invalid."},
    {"flush", (PyCFunction)StreamDecoder_flush, METH_NOARGS,
     "flush() -> str\n\nReturn what is still pending (an incomplete character becomes U+FFFD) and reset."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef StreamDecoder_getset[] = {
    {"pending", (getter)StreamDecoder_get_pending, NULL, "Number of bytes held back (0 to 3).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject StreamDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.StreamDecoder",
    .tp_basicsize = sizeof(StreamDecoderObject),
    .tp_dealloc = (destructor)StreamDecoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "StreamDecoder(tokenizer, skip_special=True)\n\n"
              "Incremental decoder that returns text in whole UTF-8 characters as token ids arrive.",
    .tp_methods = StreamDecoder_methods,
    .tp_getset = StreamDecoder_getset,
    .tp_init = (initproc)StreamDecoder_init,
    .tp_new = PyType_GenericNew,
};

int tq_py_init_tokenizer(PyObject *module)
{
    if (PyType_Ready(&TokenizerType) < 0 || PyType_Ready(&StreamDecoderType) < 0) {
        return -1;
    }
    Py_INCREF(&TokenizerType);
    if (PyModule_AddObject(module, "Tokenizer", (PyObject *)&TokenizerType) < 0) {
        Py_DECREF(&TokenizerType);
        return -1;
    }
    Py_INCREF(&StreamDecoderType);
    if (PyModule_AddObject(module, "StreamDecoder", (PyObject *)&StreamDecoderType) < 0) {
        Py_DECREF(&StreamDecoderType);
        return -1;
    }
    return 0;
}

PyObject *tq_py_tokenizer_borrow(const tq_tokenizer *tok, PyObject *owner)
{
    TokenizerObject *self = (TokenizerObject *)TokenizerType.tp_alloc(&TokenizerType, 0);
    if (self == NULL) {
        return NULL;
    }
    /* The tokenizer is read-only after creation; the cast only fits the field. */
    self->tok = (tq_tokenizer *)tok;
    Py_INCREF(owner);
    self->owner = owner;
    return (PyObject *)self;
}

const tq_tokenizer *tq_py_tokenizer_get(PyObject *obj, const char *argument)
{
    if (!PyObject_TypeCheck(obj, &TokenizerType)) {
        PyErr_Format(PyExc_TypeError, "%s must be a turboquant.Tokenizer, got %.100s", argument,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const TokenizerObject *self = (const TokenizerObject *)obj;
    if (self->tok == NULL) {
        PyErr_Format(PyExc_ValueError, "%s is a Tokenizer that was not initialized", argument);
        return NULL;
    }
    return self->tok;
}
