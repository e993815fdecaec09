/* Binding of the YAML configuration loader: _core.parse_config, _core.load_config
 * and the exception _core.ConfigError (a ValueError with line, column and key). */
#include "py_common.h"

#include "config.h"

/* The module's ConfigError type; set once by tq_py_init_config while the module
 * is created, then only read. */
static PyObject *config_error_type = NULL;

/* Raise ConfigError for a format error with a location, else the usual exception. */
static PyObject *raise_config_error(const tq_error *err, const tq_config_error_location *where)
{
    if (err->status != TQ_ERR_FORMAT || config_error_type == NULL) {
        return tq_py_raise(err);
    }
    PyObject *exc = PyObject_CallFunction(config_error_type, "s", err->message);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *line = where->line > 0 ? PyLong_FromLong(where->line) : Py_NewRef(Py_None);
    PyObject *column = where->column > 0 ? PyLong_FromLong(where->column) : Py_NewRef(Py_None);
    PyObject *key = where->key[0] ? PyUnicode_FromString(where->key) : Py_NewRef(Py_None);
    int failed = line == NULL || column == NULL || key == NULL || PyObject_SetAttrString(exc, "line", line) != 0 ||
                 PyObject_SetAttrString(exc, "column", column) != 0 || PyObject_SetAttrString(exc, "key", key) != 0;
    Py_XDECREF(line);
    Py_XDECREF(column);
    Py_XDECREF(key);
    if (!failed) {
        PyErr_SetObject(config_error_type, exc);
    }
    Py_DECREF(exc);
    return NULL;
}

static PyObject *value_to_python(const tq_config *cfg, tq_config_key key)
{
    if (cfg->is_null[key]) {
        Py_RETURN_NONE;
    }
    size_t count = 0;
    const void *value = tq_config_value(cfg, key, &count);
    switch ((tq_config_type)tq_config_key_type(key)) {
    case TQ_CFG_TYPE_INT:
        return PyLong_FromLongLong(*(const int64_t *)value);
    case TQ_CFG_TYPE_FLOAT:
        return PyFloat_FromDouble(*(const double *)value);
    case TQ_CFG_TYPE_BOOL:
        return PyBool_FromLong(*(const int *)value);
    case TQ_CFG_TYPE_STRING:
        return PyUnicode_FromString((const char *)value);
    case TQ_CFG_TYPE_INT_LIST:
    case TQ_CFG_TYPE_FLOAT_LIST: {
        PyObject *items = PyTuple_New((Py_ssize_t)count);
        for (size_t i = 0; items != NULL && i < count; i++) {
            PyObject *item = tq_config_key_type(key) == TQ_CFG_TYPE_INT_LIST
                                 ? PyLong_FromLongLong(((const int64_t *)value)[i])
                                 : PyFloat_FromDouble(((const double *)value)[i]);
            if (item == NULL) {
                Py_CLEAR(items);
                break;
            }
            PyTuple_SET_ITEM(items, (Py_ssize_t)i, item);
        }
        return items;
    }
    }
    PyErr_SetString(PyExc_SystemError, "configuration key with an unknown type");
    return NULL;
}

/* Return (values, lines): the keys present in the file with their values, and their 1-based lines. */
static PyObject *config_to_python(const tq_config *cfg)
{
    PyObject *values = PyDict_New();
    PyObject *lines = PyDict_New();
    if (values == NULL || lines == NULL) {
        goto fail;
    }
    for (int i = 0; i < TQ_CFG_KEY_COUNT; i++) {
        if (!cfg->set[i]) {
            continue;
        }
        PyObject *value = value_to_python(cfg, (tq_config_key)i);
        PyObject *line = PyLong_FromLong(cfg->line[i]);
        const char *name = tq_config_key_name((tq_config_key)i);
        int failed = value == NULL || line == NULL || PyDict_SetItemString(values, name, value) != 0 ||
                     PyDict_SetItemString(lines, name, line) != 0;
        Py_XDECREF(value);
        Py_XDECREF(line);
        if (failed) {
            goto fail;
        }
    }
    return Py_BuildValue("(NN)", values, lines);

fail:
    Py_XDECREF(values);
    Py_XDECREF(lines);
    return NULL;
}

static PyObject *py_parse_config(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *keywords[] = {"text", "source", NULL};
    Py_buffer text;
    const char *source = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s*|z:parse_config", keywords, &text, &source)) {
        return NULL;
    }
    tq_config *cfg = PyMem_Malloc(sizeof(tq_config));
    if (cfg == NULL) {
        PyBuffer_Release(&text);
        return PyErr_NoMemory();
    }
    tq_error err;
    tq_error_clear(&err);
    tq_config_error_location where;
    tq_status status = tq_config_parse_memory(text.buf, (size_t)text.len, source, cfg, &where, &err);
    PyBuffer_Release(&text);
    PyObject *result = status == TQ_OK ? config_to_python(cfg) : raise_config_error(&err, &where);
    PyMem_Free(cfg);
    return result;
}

static PyObject *py_load_config(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(arg, &encoded)) {
        return NULL;
    }
    tq_config *cfg = PyMem_Malloc(sizeof(tq_config));
    if (cfg == NULL) {
        Py_DECREF(encoded);
        return PyErr_NoMemory();
    }
    tq_error err;
    tq_error_clear(&err);
    tq_config_error_location where;
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_config_load_file(PyBytes_AS_STRING(encoded), cfg, &where, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    PyObject *result = status == TQ_OK ? config_to_python(cfg) : raise_config_error(&err, &where);
    PyMem_Free(cfg);
    return result;
}

static PyObject *py_config_keys(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    static const char *const type_names[] = {"int", "float", "bool", "str", "int_list", "float_list"};
    PyObject *keys = PyDict_New();
    for (int i = 0; keys != NULL && i < TQ_CFG_KEY_COUNT; i++) {
        const int families = tq_config_key_families((tq_config_key)i);
        PyObject *entry = Py_BuildValue("{s:s,s:O,s:O,s:O}", "type", type_names[tq_config_key_type((tq_config_key)i)],
                                        "gemma3", (families & TQ_CFG_FAMILY_GEMMA3) ? Py_True : Py_False, "gemma4",
                                        (families & TQ_CFG_FAMILY_GEMMA4) ? Py_True : Py_False, "nullable",
                                        tq_config_key_nullable((tq_config_key)i) ? Py_True : Py_False);
        if (entry == NULL || PyDict_SetItemString(keys, tq_config_key_name((tq_config_key)i), entry) != 0) {
            Py_XDECREF(entry);
            Py_CLEAR(keys);
            break;
        }
        Py_DECREF(entry);
    }
    return keys;
}

static PyMethodDef config_methods[] = {
    {"parse_config", (PyCFunction)(void (*)(void))py_parse_config, METH_VARARGS | METH_KEYWORDS,
     "parse_config(text, source=None) -> (values, lines)\n\n"
     "Parse YAML configuration text (str or bytes). values maps each key in the text to its\n"
     "value, lines maps it to its 1-based line. source names the text in messages.\n"
     "Raises ConfigError (a ValueError) with .line, .column and .key."},
    {"load_config", py_load_config, METH_O,
     "load_config(path) -> (values, lines)\n\n"
     "Read and parse a YAML configuration file, as parse_config. Raises OSError when the\n"
     "file cannot be read and ConfigError for invalid content."},
    {"config_keys", py_config_keys, METH_NOARGS,
     "config_keys() -> dict\n\nEvery configuration key with its type, the families it applies to and\n"
     "whether it may be null."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_config(PyObject *module)
{
    config_error_type = PyErr_NewExceptionWithDoc(
        "turboquant._core.ConfigError",
        "Invalid configuration: a YAML syntax error, an unknown or duplicate key, a wrong type or a value\n"
        "out of range. Attributes: line and column (1-based, or None) and key (or None).",
        PyExc_ValueError, NULL);
    if (config_error_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "ConfigError", config_error_type) != 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, config_methods);
}
