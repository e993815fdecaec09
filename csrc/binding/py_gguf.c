/* turboquant._core.GGUFFile: the C GGUF reader as a Python type.
 *
 * Arrays returned to Python (tensor data, numeric metadata arrays) are read-only
 * NumPy views of the mapping, made through this type's buffer interface. Each
 * view keeps a buffer export open, so close() only marks the object closed while
 * views exist, and the mapping is released when the last view goes away.
 */
#include "py_common.h"

#include <errno.h>
#include <string.h>

#include "gguf.h"

typedef struct {
    PyObject_HEAD
    tq_gguf *gguf;      /* NULL once the mapping is released */
    PyObject *path;     /* str, as os.fsdecode() gives it */
    Py_ssize_t exports; /* live buffer exports, one per NumPy view */
    int closed;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    uint64_t file_size;
    Py_buffer source; /* the caller's buffer for from_buffer(), while has_source is 1 */
    int has_source;
} GGUFFileObject;

/* Raise the exception for a failed tq_gguf_open(). An I/O error becomes the
 * OSError subclass of its errno (FileNotFoundError, IsADirectoryError, ...) with
 * the filename set; other statuses go through tq_py_raise(). */
static PyObject *gguf_raise_open_error(const tq_error *err, int os_errno, PyObject *path)
{
    if (err->status == TQ_ERR_IO && os_errno != 0) {
        PyObject *message = PyUnicode_DecodeUTF8(err->message, (Py_ssize_t)strlen(err->message), "replace");
        if (message == NULL) {
            return NULL;
        }
        /* OSError(errno, message, filename) constructs the matching subclass. */
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iOO", os_errno, message, path);
        Py_DECREF(message);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }

    /* A message cut at TQ_ERROR_MSG_SIZE, or a path that is not UTF-8, can contain
     * invalid UTF-8, which tq_py_raise() cannot decode, so replace such bytes. */
    PyObject *check = PyUnicode_DecodeUTF8(err->message, (Py_ssize_t)strlen(err->message), "strict");
    if (check != NULL) {
        Py_DECREF(check);
        return tq_py_raise(err);
    }
    PyErr_Clear();
    tq_error clean = *err;
    for (char *p = clean.message; *p != '\0'; p++) {
        if ((unsigned char)*p >= 0x80) {
            *p = '?';
        }
    }
    return tq_py_raise(&clean);
}

/* Release the parsed file and, for from_buffer(), the caller's buffer. */
static void gguf_release(GGUFFileObject *self)
{
    tq_gguf_close(self->gguf);
    self->gguf = NULL;
    if (self->has_source) {
        PyBuffer_Release(&self->source);
        self->has_source = 0;
    }
}

static int gguf_check_open(GGUFFileObject *self)
{
    if (self->closed || self->gguf == NULL) {
        PyErr_Format(PyExc_ValueError, "GGUF file %R is closed; open it again with GGUFFile(path)", self->path);
        return -1;
    }
    return 0;
}

/* ---- creation and destruction ---- */

/* Create the Python object for an opened gguf. It takes over gguf, the reference
 * to path and, when source is not NULL, the buffer view; on failure it releases them. */
static PyObject *gguf_wrap(PyTypeObject *type, tq_gguf *gguf, PyObject *path, Py_buffer *source)
{
    GGUFFileObject *self = (GGUFFileObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        tq_gguf_close(gguf);
        Py_DECREF(path);
        if (source != NULL) {
            PyBuffer_Release(source);
        }
        return NULL;
    }
    self->gguf = gguf;
    self->path = path;
    self->exports = 0;
    self->closed = 0;
    self->version = tq_gguf_version(gguf);
    self->alignment = tq_gguf_alignment(gguf);
    self->data_offset = tq_gguf_data_offset(gguf);
    self->file_size = tq_gguf_file_size(gguf);
    if (source != NULL) {
        self->source = *source;
        self->has_source = 1;
    }
    return (PyObject *)self;
}

static PyObject *GGUFFile_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"path", NULL};
    PyObject *path_bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&:GGUFFile", keywords, PyUnicode_FSConverter, &path_bytes)) {
        return NULL;
    }
    PyObject *path_str = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(path_bytes), PyBytes_GET_SIZE(path_bytes));
    if (path_str == NULL) {
        Py_DECREF(path_bytes);
        return NULL;
    }

    tq_error err;
    tq_error_clear(&err);
    tq_gguf *gguf = NULL;
    tq_status status;
    int os_errno = 0;
    const char *path = PyBytes_AS_STRING(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    errno = 0;
    status = tq_gguf_open(path, &gguf, &err);
    os_errno = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (status != TQ_OK) {
        gguf_raise_open_error(&err, status == TQ_ERR_IO ? os_errno : 0, path_str);
        Py_DECREF(path_str);
        return NULL;
    }

    return gguf_wrap(type, gguf, path_str, NULL);
}

static PyObject *GGUFFile_from_buffer(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"data", "name", NULL};
    PyObject *data = NULL;
    const char *name = "<buffer>";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:from_buffer", keywords, &data, &name)) {
        return NULL;
    }
    Py_buffer source;
    if (PyObject_GetBuffer(data, &source, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    if (!source.readonly) {
        PyBuffer_Release(&source);
        PyErr_Format(PyExc_TypeError,
                     "data must be a read-only buffer such as bytes (got a writable %.100s), because the reader "
                     "trusts the bytes it has checked; pass bytes(data)",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    PyObject *name_str = PyUnicode_FromString(name);
    if (name_str == NULL) {
        PyBuffer_Release(&source);
        return NULL;
    }

    tq_error err;
    tq_error_clear(&err);
    tq_gguf *gguf = NULL;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_gguf_open_memory(source.buf, (size_t)source.len, name, &gguf, &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        PyBuffer_Release(&source);
        Py_DECREF(name_str);
        return gguf_raise_open_error(&err, 0, NULL);
    }
    return gguf_wrap(type, gguf, name_str, &source);
}

static void GGUFFile_dealloc(GGUFFileObject *self)
{
    /* Every export holds a reference to self, so none is left here. */
    gguf_release(self);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *GGUFFile_close(GGUFFileObject *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    if (self->exports == 0) {
        gguf_release(self);
    }
    Py_RETURN_NONE;
}

static PyObject *GGUFFile_enter(GGUFFileObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gguf_check_open(self) != 0) {
        return NULL;
    }
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *GGUFFile_exit(GGUFFileObject *self, PyObject *args)
{
    (void)args;
    PyObject *result = GGUFFile_close(self, NULL);
    Py_XDECREF(result);
    Py_RETURN_FALSE;
}

/* ---- buffer interface: the whole file, read-only ---- */

static int GGUFFile_getbuffer(GGUFFileObject *self, Py_buffer *view, int flags)
{
    if (self->closed || self->gguf == NULL) {
        PyErr_Format(PyExc_BufferError, "GGUF file %R is closed", self->path);
        view->obj = NULL;
        return -1;
    }
    if ((uint64_t)self->file_size > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_BufferError, "GGUF file is larger than the maximum buffer size");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)tq_gguf_mapping(self->gguf), (Py_ssize_t)self->file_size,
                          1, flags) != 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void GGUFFile_releasebuffer(GGUFFileObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    if (self->closed && self->exports == 0) {
        gguf_release(self);
    }
}

static PyBufferProcs GGUFFile_as_buffer = {
    (getbufferproc)GGUFFile_getbuffer,
    (releasebufferproc)GGUFFile_releasebuffer,
};

/* A read-only NumPy array of count elements of dtype (a NumPy type string such as
 * "<f4") at ptr inside the mapping, without a copy. */
static PyObject *gguf_numpy_view(GGUFFileObject *self, const void *ptr, uint64_t count, const char *dtype)
{
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (count == 0) {
        result = PyObject_CallMethod(numpy, "empty", "is", 0, dtype);
        Py_DECREF(numpy);
        return result;
    }
    PyObject *view = PyMemoryView_FromObject((PyObject *)self);
    if (view != NULL) {
        long long offset = (long long)((const uint8_t *)ptr - (const uint8_t *)tq_gguf_mapping(self->gguf));
        result = PyObject_CallMethod(numpy, "frombuffer", "OsKL", view, dtype, (unsigned long long)count, offset);
        Py_DECREF(view);
    }
    Py_DECREF(numpy);
    return result;
}

/* ---- metadata values ---- */

static PyObject *gguf_decode_string(tq_gguf_string s)
{
    return PyUnicode_DecodeUTF8(s.data, (Py_ssize_t)s.len, "surrogateescape");
}

/* NumPy type string of a numeric or bool element type; NULL for string and array. */
static const char *gguf_numpy_dtype(tq_gguf_value_type type)
{
    switch (type) {
    case TQ_GGUF_UINT8:
        return "u1";
    case TQ_GGUF_INT8:
        return "i1";
    case TQ_GGUF_UINT16:
        return "<u2";
    case TQ_GGUF_INT16:
        return "<i2";
    case TQ_GGUF_UINT32:
        return "<u4";
    case TQ_GGUF_INT32:
        return "<i4";
    case TQ_GGUF_FLOAT32:
        return "<f4";
    case TQ_GGUF_BOOL:
        return "?";
    case TQ_GGUF_UINT64:
        return "<u8";
    case TQ_GGUF_INT64:
        return "<i8";
    case TQ_GGUF_FLOAT64:
        return "<f8";
    default:
        return NULL;
    }
}

static PyObject *gguf_array_to_python(GGUFFileObject *self, const tq_gguf_array *arr)
{
    const char *dtype = gguf_numpy_dtype(arr->type);
    if (dtype != NULL) {
        return gguf_numpy_view(self, arr->data, arr->count, dtype);
    }

    if (arr->count > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "GGUF array has more elements than a Python list can hold");
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)arr->count);
    if (list == NULL) {
        return NULL;
    }
    const uint8_t *cursor = arr->data;
    for (uint64_t i = 0; i < arr->count; i++) {
        PyObject *item = NULL;
        if (arr->type == TQ_GGUF_STRING) {
            tq_gguf_string s = arr->strings != NULL ? arr->strings[i] : tq_gguf_array_next_string(&cursor);
            item = gguf_decode_string(s);
        } else {
            tq_gguf_array inner;
            tq_gguf_array_next_inner(&cursor, &inner);
            item = gguf_array_to_python(self, &inner);
        }
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *gguf_value_to_python(GGUFFileObject *self, const tq_gguf_kv *kv)
{
    switch (kv->type) {
    case TQ_GGUF_UINT8:
    case TQ_GGUF_UINT16:
    case TQ_GGUF_UINT32:
    case TQ_GGUF_UINT64:
        return PyLong_FromUnsignedLongLong(kv->value.u64);
    case TQ_GGUF_INT8:
    case TQ_GGUF_INT16:
    case TQ_GGUF_INT32:
    case TQ_GGUF_INT64:
        return PyLong_FromLongLong(kv->value.i64);
    case TQ_GGUF_FLOAT32:
    case TQ_GGUF_FLOAT64:
        return PyFloat_FromDouble(kv->value.f64);
    case TQ_GGUF_BOOL:
        return PyBool_FromLong(kv->value.u64 != 0);
    case TQ_GGUF_STRING:
        return gguf_decode_string(kv->value.str);
    case TQ_GGUF_ARRAY:
        return gguf_array_to_python(self, &kv->value.arr);
    }
    PyErr_Format(PyExc_SystemError, "GGUF value type %d has no Python conversion", (int)kv->type);
    return NULL;
}

/* Type description of a value: "uint32", "string", "array[float32]", "array[array]". */
static PyObject *gguf_type_description(const tq_gguf_kv *kv)
{
    if (kv->type == TQ_GGUF_ARRAY) {
        return PyUnicode_FromFormat("array[%s]", tq_gguf_value_type_name((int)kv->value.arr.type));
    }
    return PyUnicode_FromString(tq_gguf_value_type_name((int)kv->type));
}

static PyObject *gguf_build_metadata(GGUFFileObject *self, int types_only)
{
    if (gguf_check_open(self) != 0) {
        return NULL;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    uint64_t n = tq_gguf_n_kv(self->gguf);
    for (uint64_t i = 0; i < n; i++) {
        const tq_gguf_kv *kv = tq_gguf_kv_at(self->gguf, i);
        PyObject *key = gguf_decode_string(kv->key);
        PyObject *value = NULL;
        if (key != NULL && types_only) {
            value = gguf_type_description(kv);
        } else if (key != NULL) {
            value = gguf_value_to_python(self, kv);
        }
        int failed = value == NULL || PyDict_SetItem(dict, key, value) != 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (failed) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    return dict;
}

static PyObject *GGUFFile_get_metadata(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return gguf_build_metadata(self, 0);
}

static PyObject *GGUFFile_get_metadata_types(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return gguf_build_metadata(self, 1);
}

/* ---- tensors ---- */

static PyObject *gguf_tensor_to_python(const tq_gguf_tensor *t)
{
    PyObject *shape = PyTuple_New((Py_ssize_t)t->n_dims);
    if (shape == NULL) {
        return NULL;
    }
    for (uint32_t d = 0; d < t->n_dims; d++) {
        PyObject *dim = PyLong_FromUnsignedLongLong(t->ne[d]);
        if (dim == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, (Py_ssize_t)d, dim);
    }
    PyObject *name = gguf_decode_string(t->name);
    if (name == NULL) {
        Py_DECREF(shape);
        return NULL;
    }
    return Py_BuildValue("{s:N,s:N,s:i,s:s,s:K,s:K}", "name", name, "shape", shape, "type", (int)t->type,
                         "type_name", tq_type_name((int)t->type), "offset", (unsigned long long)t->offset,
                         "nbytes", (unsigned long long)t->nbytes);
}

static PyObject *GGUFFile_get_tensors(GGUFFileObject *self, void *closure)
{
    (void)closure;
    if (gguf_check_open(self) != 0) {
        return NULL;
    }
    uint64_t n = tq_gguf_n_tensors(self->gguf);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (uint64_t i = 0; i < n; i++) {
        PyObject *item = gguf_tensor_to_python(tq_gguf_tensor_at(self->gguf, i));
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* Encode a str key or tensor name as the UTF-8 bytes stored in the file. Invalid
 * bytes come back through 'surrogateescape', as .metadata and .tensors decode them. */
static PyObject *gguf_encode_name(PyObject *name, const char *what)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what, Py_TYPE(name)->tp_name);
        return NULL;
    }
    return PyUnicode_AsEncodedString(name, "utf-8", "surrogateescape");
}

static PyObject *GGUFFile_tensor_data(GGUFFileObject *self, PyObject *name)
{
    PyObject *encoded = gguf_encode_name(name, "tensor name");
    if (encoded == NULL) {
        return NULL;
    }
    if (gguf_check_open(self) != 0) {
        Py_DECREF(encoded);
        return NULL;
    }
    const tq_gguf_tensor *t =
        tq_gguf_find_tensor_len(self->gguf, PyBytes_AS_STRING(encoded), (size_t)PyBytes_GET_SIZE(encoded));
    Py_DECREF(encoded);
    if (t == NULL) {
        PyErr_Format(PyExc_KeyError, "no tensor named %R in GGUF file %R; see .tensors for the names", name,
                     self->path);
        return NULL;
    }
    return gguf_numpy_view(self, t->data, t->nbytes, "u1");
}

static PyObject *GGUFFile_get(GGUFFileObject *self, PyObject *args)
{
    PyObject *key = NULL;
    PyObject *default_value = Py_None;
    if (!PyArg_UnpackTuple(args, "get", 1, 2, &key, &default_value)) {
        return NULL;
    }
    PyObject *encoded = gguf_encode_name(key, "metadata key");
    if (encoded == NULL) {
        return NULL;
    }
    if (gguf_check_open(self) != 0) {
        Py_DECREF(encoded);
        return NULL;
    }
    const tq_gguf_kv *kv =
        tq_gguf_find_kv_len(self->gguf, PyBytes_AS_STRING(encoded), (size_t)PyBytes_GET_SIZE(encoded));
    Py_DECREF(encoded);
    if (kv == NULL) {
        Py_INCREF(default_value);
        return default_value;
    }
    return gguf_value_to_python(self, kv);
}

/* Call the typed C getter named by kind on key; a test hook for tq_gguf_get_*(),
 * which the model loader uses. An array returns (element type name, count). */
static PyObject *GGUFFile_typed_value(GGUFFileObject *self, PyObject *args)
{
    const char *key = NULL;
    const char *kind = NULL;
    if (!PyArg_ParseTuple(args, "ss:_typed_value", &key, &kind)) {
        return NULL;
    }
    if (gguf_check_open(self) != 0) {
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    if (strcmp(kind, "u32") == 0) {
        uint32_t value = 0;
        status = tq_gguf_get_u32(self->gguf, key, &value, &err);
        if (status == TQ_OK) {
            return PyLong_FromUnsignedLong(value);
        }
    } else if (strcmp(kind, "f32") == 0) {
        float value = 0.0f;
        status = tq_gguf_get_f32(self->gguf, key, &value, &err);
        if (status == TQ_OK) {
            return PyFloat_FromDouble((double)value);
        }
    } else if (strcmp(kind, "bool") == 0) {
        int value = 0;
        status = tq_gguf_get_bool(self->gguf, key, &value, &err);
        if (status == TQ_OK) {
            return PyBool_FromLong(value);
        }
    } else if (strcmp(kind, "string") == 0) {
        tq_gguf_string value;
        status = tq_gguf_get_string(self->gguf, key, &value, &err);
        if (status == TQ_OK) {
            return gguf_decode_string(value);
        }
    } else if (strcmp(kind, "array") == 0) {
        tq_gguf_array value;
        status = tq_gguf_get_array(self->gguf, key, &value, &err);
        if (status == TQ_OK) {
            return Py_BuildValue("(sK)", tq_gguf_value_type_name((int)value.type), (unsigned long long)value.count);
        }
    } else {
        PyErr_Format(PyExc_ValueError, "kind must be 'u32', 'f32', 'bool', 'string' or 'array', not '%s'", kind);
        return NULL;
    }
    return tq_py_raise(&err);
}

/* ---- simple attributes ---- */

static PyObject *GGUFFile_get_version(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->version);
}

static PyObject *GGUFFile_get_alignment(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->alignment);
}

static PyObject *GGUFFile_get_data_offset(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->data_offset);
}

static PyObject *GGUFFile_get_file_size(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->file_size);
}

static PyObject *GGUFFile_get_path(GGUFFileObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(self->path);
    return self->path;
}

static PyObject *GGUFFile_get_closed(GGUFFileObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyObject *GGUFFile_repr(GGUFFileObject *self)
{
    if (self->closed) {
        return PyUnicode_FromFormat("<GGUFFile %R (closed)>", self->path);
    }
    return PyUnicode_FromFormat("<GGUFFile %R version=%u tensors=%llu metadata=%llu>", self->path,
                                (unsigned)self->version, (unsigned long long)tq_gguf_n_tensors(self->gguf),
                                (unsigned long long)tq_gguf_n_kv(self->gguf));
}

static PyMethodDef GGUFFile_methods[] = {
    {"tensor_data", (PyCFunction)GGUFFile_tensor_data, METH_O,
     "tensor_data(name) -> numpy.ndarray\n\n"
     "Raw bytes of the tensor called name: a read-only uint8 array of length nbytes over\n"
     "the mapping, without a copy. The array keeps the mapping alive, even after close().\n"
     "Raises KeyError when no tensor has that name."},
    {"from_buffer", (PyCFunction)(void (*)(void))GGUFFile_from_buffer, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_buffer(data, name='<buffer>') -> GGUFFile\n\n"
     "Parse a GGUF file held in memory: any read-only buffer such as bytes or a read-only\n"
     "mmap. The object keeps the buffer without copying it. name replaces the path in\n"
     "error messages and in .path. Raises TypeError for a writable buffer."},
    {"get", (PyCFunction)GGUFFile_get, METH_VARARGS,
     "get(key, default=None) -> value\n\n"
     "Value of one metadata key, converted as in .metadata, or default when the file has\n"
     "no such key. Unlike .metadata it converts only this value, so it is fast on files\n"
     "with a large vocabulary."},
    {"_typed_value", (PyCFunction)GGUFFile_typed_value, METH_VARARGS,
     "_typed_value(key, kind) -> value\n\nRead key through the C getter for kind ('u32', 'f32', 'bool',\n"
     "'string' or 'array'); a test hook. Raises ValueError for a missing key or a wrong type."},
    {"close", (PyCFunction)GGUFFile_close, METH_NOARGS,
     "close()\n\nClose the file. The mapping is released now, or when the last array returned\n"
     "by tensor_data() or .metadata is deleted. Calling close() again does nothing."},
    {"__enter__", (PyCFunction)GGUFFile_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)GGUFFile_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef GGUFFile_getset[] = {
    {"version", (getter)GGUFFile_get_version, NULL, "GGUF format version of the file (2 or 3).", NULL},
    {"alignment", (getter)GGUFFile_get_alignment, NULL,
     "Alignment of tensor data in bytes: general.alignment, or 32 when the file has no such key.", NULL},
    {"data_offset", (getter)GGUFFile_get_data_offset, NULL,
     "File offset of the data section; a tensor's data starts at data_offset + its offset.", NULL},
    {"file_size", (getter)GGUFFile_get_file_size, NULL, "Size of the file in bytes.", NULL},
    {"path", (getter)GGUFFile_get_path, NULL, "Path of the file, as a str.", NULL},
    {"closed", (getter)GGUFFile_get_closed, NULL, "True after close().", NULL},
    {"metadata", (getter)GGUFFile_get_metadata, NULL,
     "Metadata as a new dict of key -> value, in file order.\n\n"
     "Integers are int, floats are float, bools are bool. Strings and keys are str,\n"
     "decoded from UTF-8 with 'surrogateescape', so invalid bytes survive a\n"
     "s.encode('utf-8', 'surrogateescape') round trip. Arrays of numbers or bools are\n"
     "read-only NumPy arrays over the mapping (no copy), arrays of strings are lists of\n"
     "str, and arrays of arrays are lists of the inner arrays converted by the same rules.\n"
     "The dict is built on each access, so keep it in a variable.",
     NULL},
    {"metadata_types", (getter)GGUFFile_get_metadata_types, NULL,
     "GGUF value type of each metadata key as a str: 'uint32', 'string', 'array[float32]', 'array[array]'.",
     NULL},
    {"tensors", (getter)GGUFFile_get_tensors, NULL,
     "Tensor infos in file order: a list of dicts with name (str), shape (tuple in GGUF ne\n"
     "order, ne[0] first), type (GGML type id), type_name ('q4_K'), offset (bytes from the\n"
     "start of the data section) and nbytes.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GGUFFile_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.GGUFFile",
    .tp_basicsize = sizeof(GGUFFileObject),
    .tp_dealloc = (destructor)GGUFFile_dealloc,
    .tp_repr = (reprfunc)GGUFFile_repr,
    .tp_as_buffer = &GGUFFile_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GGUFFile(path)\n\n"
              "A GGUF model file, memory-mapped read-only and validated when opened.\n\n"
              "Raises FileNotFoundError (or another OSError) when path cannot be opened,\n"
              "ValueError when the file is malformed or truncated, and NotImplementedError\n"
              "for a GGUF version or tensor type this reader does not support. The object\n"
              "is a context manager and exports the whole file as a read-only buffer.",
    .tp_methods = GGUFFile_methods,
    .tp_getset = GGUFFile_getset,
    .tp_new = GGUFFile_new,
};

int tq_py_init_gguf(PyObject *module)
{
    if (PyType_Ready(&GGUFFile_Type) != 0) {
        return -1;
    }
    Py_INCREF(&GGUFFile_Type);
    if (PyModule_AddObject(module, "GGUFFile", (PyObject *)&GGUFFile_Type) != 0) {
        Py_DECREF(&GGUFFile_Type);
        return -1;
    }
    return 0;
}
