/* Binding of the safetensors reader: _core.SafetensorsFile.
 *
 * The object exports the whole file (or bytes object) through the buffer
 * protocol, read-only, so that NumPy arrays over tensors share the mapping and
 * keep the object alive. close() raises BufferError while such arrays exist. */
#include "py_common.h"

#include "safetensors.h"

typedef struct {
    PyObject_HEAD
    tq_safetensors *file;
    PyObject *source; /* the bytes object parsed in memory, or NULL for a mapped file */
    Py_ssize_t exports;
} SafetensorsFileObject;

static int require_open(SafetensorsFileObject *self)
{
    if (self->file == NULL) {
        PyErr_SetString(PyExc_ValueError, "the safetensors file is closed");
        return -1;
    }
    return 0;
}

static int st_init(SafetensorsFileObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"source", NULL};
    PyObject *source;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:SafetensorsFile", keywords, &source)) {
        return -1;
    }
    if (self->file != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SafetensorsFile is already open");
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    if (PyBytes_Check(source)) {
        status = tq_safetensors_open_memory(PyBytes_AS_STRING(source), (size_t)PyBytes_GET_SIZE(source), &self->file,
                                            &err);
        if (status == TQ_OK) {
            self->source = Py_NewRef(source);
        }
    } else {
        PyObject *encoded = NULL;
        if (!PyUnicode_FSConverter(source, &encoded)) {
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS
        status = tq_safetensors_open(PyBytes_AS_STRING(encoded), &self->file, &err);
        Py_END_ALLOW_THREADS
        Py_DECREF(encoded);
    }
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    return 0;
}

static void st_dealloc(SafetensorsFileObject *self)
{
    tq_safetensors_close(self->file);
    Py_XDECREF(self->source);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *st_close(SafetensorsFileObject *self, PyObject *args)
{
    (void)args;
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError, "cannot close the safetensors file while %zd arrays still use its memory; "
                     "delete them first", self->exports);
        return NULL;
    }
    tq_safetensors_close(self->file);
    self->file = NULL;
    Py_CLEAR(self->source);
    Py_RETURN_NONE;
}

static PyObject *tensor_info(const tq_safetensors *file, const tq_safetensors_tensor *t)
{
    PyObject *shape = PyTuple_New(t->n_dims);
    for (int d = 0; shape != NULL && d < t->n_dims; d++) {
        PyObject *dim = PyLong_FromUnsignedLongLong(t->shape[d]);
        if (dim == NULL) {
            Py_CLEAR(shape);
            break;
        }
        PyTuple_SET_ITEM(shape, d, dim);
    }
    if (shape == NULL) {
        return NULL;
    }
    const uint64_t start = tq_safetensors_data_start(file) + t->offset;
    return Py_BuildValue("{s:s,s:N,s:K,s:K}", "dtype", tq_safetensors_dtype_name(t->dtype), "shape", shape,
                         "file_offset", (unsigned long long)start, "nbytes", (unsigned long long)t->nbytes);
}

static PyObject *st_names(SafetensorsFileObject *self, PyObject *args)
{
    (void)args;
    if (require_open(self) != 0) {
        return NULL;
    }
    const size_t n = tq_safetensors_count(self->file);
    PyObject *names = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; names != NULL && i < n; i++) {
        PyObject *name = PyUnicode_FromString(tq_safetensors_tensor_at(self->file, i)->name);
        if (name == NULL) {
            Py_CLEAR(names);
            break;
        }
        PyList_SET_ITEM(names, (Py_ssize_t)i, name);
    }
    return names;
}

static PyObject *st_info(SafetensorsFileObject *self, PyObject *arg)
{
    if (require_open(self) != 0) {
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    const tq_safetensors_tensor *t = tq_safetensors_find(self->file, name);
    if (t == NULL) {
        PyErr_Format(PyExc_KeyError, "no tensor named %R in this safetensors file", arg);
        return NULL;
    }
    return tensor_info(self->file, t);
}

static PyObject *st_metadata(SafetensorsFileObject *self, void *closure)
{
    (void)closure;
    if (require_open(self) != 0) {
        return NULL;
    }
    PyObject *metadata = PyDict_New();
    for (size_t i = 0; metadata != NULL && i < tq_safetensors_metadata_count(self->file); i++) {
        PyObject *value = PyUnicode_FromString(tq_safetensors_metadata_value(self->file, i));
        if (value == NULL || PyDict_SetItemString(metadata, tq_safetensors_metadata_key(self->file, i), value) != 0) {
            Py_XDECREF(value);
            Py_CLEAR(metadata);
            break;
        }
        Py_DECREF(value);
    }
    return metadata;
}

static PyObject *st_data_start(SafetensorsFileObject *self, void *closure)
{
    (void)closure;
    if (require_open(self) != 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(tq_safetensors_data_start(self->file));
}

static Py_ssize_t st_len(SafetensorsFileObject *self)
{
    if (require_open(self) != 0) {
        return -1;
    }
    return (Py_ssize_t)tq_safetensors_count(self->file);
}

static int st_getbuffer(SafetensorsFileObject *self, Py_buffer *view, int flags)
{
    if (require_open(self) != 0) {
        view->obj = NULL;
        return -1;
    }
    size_t size = 0;
    const void *bytes = tq_safetensors_bytes(self->file, &size);
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)bytes, (Py_ssize_t)size, 1, flags) != 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void st_releasebuffer(SafetensorsFileObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

static PyBufferProcs st_buffer = {(getbufferproc)st_getbuffer, (releasebufferproc)st_releasebuffer};

static PySequenceMethods st_sequence = {.sq_length = (lenfunc)st_len};

static PyMethodDef st_methods[] = {
    {"names", (PyCFunction)st_names, METH_NOARGS, "names() -> list of tensor names, sorted"},
    {"info", (PyCFunction)st_info, METH_O,
     "info(name) -> dict with dtype (\"F32\", ...), shape (tuple), file_offset and nbytes.\n"
     "Raises KeyError for an unknown name."},
    {"close", (PyCFunction)st_close, METH_NOARGS,
     "close()\n\nUnmap the file. Raises BufferError while arrays over its memory exist."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef st_getset[] = {
    {"metadata", (getter)st_metadata, NULL, "The __metadata__ entries (dict of str).", NULL},
    {"data_start", (getter)st_data_start, NULL, "Byte offset of the data buffer: 8 + header length.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SafetensorsFileType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.SafetensorsFile",
    .tp_basicsize = sizeof(SafetensorsFileObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SafetensorsFile(source)\n\nA safetensors file (a path, memory-mapped) or bytes object, with its\n"
              "header checked. Exports its bytes read-only through the buffer protocol.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)st_init,
    .tp_dealloc = (destructor)st_dealloc,
    .tp_methods = st_methods,
    .tp_getset = st_getset,
    .tp_as_buffer = &st_buffer,
    .tp_as_sequence = &st_sequence,
};

int tq_py_init_safetensors(PyObject *module)
{
    if (PyType_Ready(&SafetensorsFileType) != 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "SafetensorsFile", (PyObject *)&SafetensorsFileType);
}
