#include "py_common.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

PyObject *tq_py_raise(const tq_error *err)
{
    PyObject *type = PyExc_RuntimeError;
    switch (err->status) {
    case TQ_ERR_INVALID:
    case TQ_ERR_FORMAT:
        type = PyExc_ValueError;
        break;
    case TQ_ERR_TYPE:
        type = PyExc_TypeError;
        break;
    case TQ_ERR_NOMEM:
        type = PyExc_MemoryError;
        break;
    case TQ_ERR_IO:
        type = PyExc_OSError;
        break;
    case TQ_ERR_UNSUPPORTED:
        type = PyExc_NotImplementedError;
        break;
    case TQ_ERR_RANGE:
        type = PyExc_IndexError;
        break;
    default:
        break;
    }
    PyErr_SetString(type, err->message[0] ? err->message : "turboquant: unknown error");
    return NULL;
}

int tq_py_matrix_acquire(PyObject *obj, const char *name, Py_ssize_t expected_cols, tq_py_matrix *out)
{
    memset(out, 0, sizeof(*out));
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be a C-contiguous float32 array (got %.100s); "
                     "pass numpy.ascontiguousarray(%s, dtype=numpy.float32)",
                     name, Py_TYPE(obj)->tp_name, name);
        return -1;
    }
    out->acquired = 1;

    const char *format = out->view.format ? out->view.format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    if (strcmp(format, "f") != 0 || out->view.itemsize != 4) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32 (got buffer format '%s')", name,
                     out->view.format ? out->view.format : "B");
        tq_py_matrix_release(out);
        return -1;
    }

    if (out->view.ndim == 1) {
        out->rows = 1;
        out->cols = out->view.shape[0];
    } else if (out->view.ndim == 2) {
        out->rows = out->view.shape[0];
        out->cols = out->view.shape[1];
    } else {
        PyErr_Format(PyExc_ValueError, "%s must be 1-D or 2-D (rows, dim), got %d dimensions", name,
                     out->view.ndim);
        tq_py_matrix_release(out);
        return -1;
    }

    if (expected_cols >= 0 && out->cols != expected_cols) {
        PyErr_Format(PyExc_ValueError, "%s has %zd columns but this object expects dim=%zd", name, out->cols,
                     expected_cols);
        tq_py_matrix_release(out);
        return -1;
    }
    out->data = (const float *)out->view.buf;
    return 0;
}

void tq_py_matrix_release(tq_py_matrix *m)
{
    if (m->acquired) {
        PyBuffer_Release(&m->view);
        m->acquired = 0;
    }
}

int tq_py_float_sequence(PyObject *obj, const char *name, float **out, Py_ssize_t *count)
{
    char message[128];
    snprintf(message, sizeof(message), "%s must be a sequence of numbers", name);
    PyObject *sequence = PySequence_Fast(obj, message);
    if (sequence == NULL) {
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    float *values = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (values == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const double value = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(sequence, i));
        if (value == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be a number", name, i);
            PyMem_Free(values);
            Py_DECREF(sequence);
            return -1;
        }
        values[i] = (float)value;
    }
    Py_DECREF(sequence);
    *out = values;
    *count = n;
    return 0;
}

int tq_py_check_finite(const tq_py_matrix *m, const char *name)
{
    const size_t n = (size_t)m->rows * (size_t)m->cols;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(m->data[i])) {
            char value[32];
            snprintf(value, sizeof(value), "%g", (double)m->data[i]);
            PyErr_Format(PyExc_ValueError, "%s[%zd, %zd] is %s; inputs must be finite (no NaN or infinity)", name,
                         (Py_ssize_t)(i / (size_t)m->cols), (Py_ssize_t)(i % (size_t)m->cols), value);
            return -1;
        }
    }
    return 0;
}
