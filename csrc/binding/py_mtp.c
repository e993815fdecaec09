/* CPython binding of the Medusa heads (mtp.h) and their checkpoints
 * (mtp_checkpoint.h): module functions that turboquant.mtp and turboquant.train
 * call with NumPy arrays, without copies. */
#include "py_common.h"

#include <numpy/arrayobject.h>

#include "model.h"
#include "mtp.h"
#include "mtp_checkpoint.h"
#include "weights.h"

/* A C-contiguous array of 4-byte elements of kind 'f' (float32) or 'i' (int32),
 * writable when asked, with count elements (count < 0 accepts any). Returns 0, or -1
 * with ValueError/TypeError naming the argument. */
static int acquire(PyObject *obj, const char *name, char kind, int writable, Py_ssize_t count, Py_buffer *view)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s %s array", name, writable ? " writable" : "",
                     kind == 'f' ? "float32" : "int32");
        return -1;
    }
    const char *format = view->format != NULL ? view->format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    const int kind_ok = kind == 'f' ? strcmp(format, "f") == 0
                                    : (strcmp(format, "i") == 0 || strcmp(format, "l") == 0);
    if (!kind_ok || view->itemsize != 4) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got format '%s'", name,
                     kind == 'f' ? "float32" : "int32", view->format != NULL ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    const Py_ssize_t n = view->len / 4;
    if (count >= 0 && n != count) {
        PyErr_Format(PyExc_ValueError, "%s has %zd elements; expected %zd", name, n, count);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Heads from weight [n_heads, hidden, hidden] and bias [n_heads, hidden] arrays. */
static int acquire_heads(PyObject *weight, PyObject *bias, const tq_model *model, Py_buffer *weight_view,
                         Py_buffer *bias_view, tq_mtp_heads *heads)
{
    const int hidden = tq_model_get_config(model)->hidden;
    const Py_ssize_t matrix = (Py_ssize_t)hidden * hidden;
    if (acquire(weight, "weight", 'f', 0, -1, weight_view) != 0) {
        return -1;
    }
    if (weight_view->len / 4 % matrix != 0 || weight_view->len == 0) {
        PyErr_Format(PyExc_ValueError, "weight has %zd elements; expected n_heads * %d * %d for hidden size %d",
                     weight_view->len / 4, hidden, hidden, hidden);
        PyBuffer_Release(weight_view);
        return -1;
    }
    const Py_ssize_t n_heads = weight_view->len / 4 / matrix;
    if (acquire(bias, "bias", 'f', 0, n_heads * hidden, bias_view) != 0) {
        PyBuffer_Release(weight_view);
        return -1;
    }
    heads->n_heads = (int)n_heads;
    heads->hidden = hidden;
    heads->weight = weight_view->buf;
    heads->bias = bias_view->buf;
    heads->vocab = NULL;
    return 0;
}

/* ---- Draft vocabularies ----
 * A capsule named VOCAB_CAPSULE owns a tq_mtp_vocab. Its context is a new reference to the
 * model object the rows were gathered from, so the vocabulary is only used with that model. */

#define VOCAB_CAPSULE "turboquant._core.mtp_vocab"

static void vocab_capsule_free(PyObject *capsule)
{
    tq_mtp_vocab_free(PyCapsule_GetPointer(capsule, VOCAB_CAPSULE));
    Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule));
}

static PyObject *py_mtp_vocab(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *model_object, *ids_object;
    if (!PyArg_ParseTuple(args, "OO:mtp_vocab", &model_object, &ids_object)) {
        return NULL;
    }
    const tq_model *model = tq_py_model_get(model_object, "model");
    if (model == NULL) {
        return NULL;
    }
    Py_buffer ids;
    if (acquire(ids_object, "ids", 'i', 0, -1, &ids) != 0) {
        return NULL;
    }
    tq_mtp_vocab *vocab = NULL;
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_vocab_create(model, ids.buf, ids.len / 4, &vocab, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ids);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    PyObject *capsule = PyCapsule_New(vocab, VOCAB_CAPSULE, vocab_capsule_free);
    if (capsule == NULL) {
        tq_mtp_vocab_free(vocab);
        return NULL;
    }
    Py_INCREF(model_object);
    if (PyCapsule_SetContext(capsule, model_object) != 0) {
        Py_DECREF(model_object);
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

const tq_mtp_vocab *tq_py_vocab_get(PyObject *obj, const tq_model *model, const char *argument, int *ok)
{
    *ok = 1;
    if (obj == NULL || obj == Py_None) {
        return NULL;
    }
    *ok = 0;
    if (!PyCapsule_IsValid(obj, VOCAB_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "%s must be None or a draft vocabulary from _core.mtp_vocab, got %s", argument,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const tq_model *owner = tq_py_model_get((PyObject *)PyCapsule_GetContext(obj), argument);
    if (owner != model) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s was gathered from another model's LM head; call _core.mtp_vocab with this "
                     "model", argument);
        return NULL;
    }
    *ok = 1;
    return PyCapsule_GetPointer(obj, VOCAB_CAPSULE);
}

static PyObject *py_mtp_forward(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"model", "weight", "bias", "hidden", "residual", "vocab", NULL};
    PyObject *model_object, *weight, *bias, *hidden_object, *vocab_object = Py_None;
    int want_residual = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|$pO:mtp_forward", keywords, &model_object, &weight, &bias,
                                     &hidden_object, &want_residual, &vocab_object)) {
        return NULL;
    }
    const tq_model *model = tq_py_model_get(model_object, "model");
    if (model == NULL) {
        return NULL;
    }
    int vocab_ok;
    const tq_mtp_vocab *vocab = tq_py_vocab_get(vocab_object, model, "vocab", &vocab_ok);
    if (!vocab_ok) {
        return NULL;
    }
    const tq_model_config *config = tq_model_get_config(model);
    Py_buffer weight_view, bias_view, hidden_view;
    tq_mtp_heads heads;
    if (acquire_heads(weight, bias, model, &weight_view, &bias_view, &heads) != 0) {
        return NULL;
    }
    heads.vocab = vocab;
    PyObject *logits = NULL, *residual = NULL, *result = NULL;
    if (acquire(hidden_object, "hidden", 'f', 0, -1, &hidden_view) != 0) {
        goto release_heads;
    }
    const Py_ssize_t n = hidden_view.len / 4 / config->hidden;
    if (n < 1 || n * config->hidden * 4 != hidden_view.len) {
        PyErr_Format(PyExc_ValueError, "hidden has %zd elements; expected rows of %d floats", hidden_view.len / 4,
                     config->hidden);
        goto release;
    }
    npy_intp logits_dims[3] = {heads.n_heads, n, vocab != NULL ? (npy_intp)vocab->rows.n_out : config->n_vocab};
    npy_intp residual_dims[3] = {heads.n_heads, n, config->hidden};
    logits = PyArray_SimpleNew(3, logits_dims, NPY_FLOAT32);
    if (logits == NULL) {
        goto release;
    }
    if (want_residual && (residual = PyArray_SimpleNew(3, residual_dims, NPY_FLOAT32)) == NULL) {
        goto release;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    float *residual_data = residual != NULL ? PyArray_DATA((PyArrayObject *)residual) : NULL;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_forward(model, &heads, hidden_view.buf, n, PyArray_DATA((PyArrayObject *)logits), residual_data,
                            &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto release;
    }
    if (residual != NULL) {
        result = PyTuple_Pack(2, logits, residual);
    } else {
        result = logits;
        Py_INCREF(result);
    }
release:
    Py_XDECREF(logits);
    Py_XDECREF(residual);
    PyBuffer_Release(&hidden_view);
release_heads:
    PyBuffer_Release(&weight_view);
    PyBuffer_Release(&bias_view);
    return result;
}

static PyObject *py_mtp_teacher(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"model", "hidden", "top_k", "vocab", NULL};
    PyObject *model_object, *hidden_object, *vocab_object = Py_None;
    int top_k;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOi|$O:mtp_teacher", keywords, &model_object, &hidden_object,
                                     &top_k, &vocab_object)) {
        return NULL;
    }
    const tq_model *model = tq_py_model_get(model_object, "model");
    if (model == NULL) {
        return NULL;
    }
    int vocab_ok;
    const tq_mtp_vocab *vocab = tq_py_vocab_get(vocab_object, model, "vocab", &vocab_ok);
    if (!vocab_ok) {
        return NULL;
    }
    const tq_model_config *config = tq_model_get_config(model);
    const long long entries = vocab != NULL ? (long long)vocab->rows.n_out : config->n_vocab;
    if (top_k < 1 || top_k > entries) {
        PyErr_Format(PyExc_ValueError, "top_k is %d; pass a value in [1, %lld]", top_k, entries);
        return NULL;
    }
    Py_buffer hidden_view;
    if (acquire(hidden_object, "hidden", 'f', 0, -1, &hidden_view) != 0) {
        return NULL;
    }
    PyObject *ids = NULL, *probs = NULL, *kept = NULL, *result = NULL;
    const Py_ssize_t n = hidden_view.len / 4 / config->hidden;
    if (n < 1 || n * config->hidden * 4 != hidden_view.len) {
        PyErr_Format(PyExc_ValueError, "hidden has %zd elements; expected rows of %d floats", hidden_view.len / 4,
                     config->hidden);
        goto release;
    }
    npy_intp dims[2] = {n, top_k};
    ids = PyArray_SimpleNew(2, dims, NPY_INT32);
    probs = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    kept = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (ids == NULL || probs == NULL || kept == NULL) {
        goto release;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_teacher(model, vocab, hidden_view.buf, n, top_k, PyArray_DATA((PyArrayObject *)ids),
                            PyArray_DATA((PyArrayObject *)probs), PyArray_DATA((PyArrayObject *)kept), &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto release;
    }
    result = PyTuple_Pack(3, ids, probs, kept);
release:
    Py_XDECREF(ids);
    Py_XDECREF(probs);
    Py_XDECREF(kept);
    PyBuffer_Release(&hidden_view);
    return result;
}

static PyObject *py_mtp_loss_grad(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"model",         "weight",     "bias",       "hidden",     "seq_len",
                               "teacher_ids",   "teacher_probs", "grad_weight", "grad_bias", "student_top_m",
                               "head_decay",    "vocab",      NULL};
    PyObject *model_object, *weight, *bias, *hidden_object, *ids_object, *probs_object, *gw_object, *gb_object;
    PyObject *vocab_object = Py_None;
    long long seq_len;
    int top_m = 4096;
    float head_decay = 0.8f;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOLOOOO|ifO:mtp_loss_grad", keywords, &model_object, &weight,
                                     &bias, &hidden_object, &seq_len, &ids_object, &probs_object, &gw_object,
                                     &gb_object, &top_m, &head_decay, &vocab_object)) {
        return NULL;
    }
    const tq_model *model = tq_py_model_get(model_object, "model");
    if (model == NULL) {
        return NULL;
    }
    int vocab_ok;
    const tq_mtp_vocab *vocab = tq_py_vocab_get(vocab_object, model, "vocab", &vocab_ok);
    if (!vocab_ok) {
        return NULL;
    }
    const tq_model_config *config = tq_model_get_config(model);
    if (seq_len < 1) {
        PyErr_Format(PyExc_ValueError, "seq_len is %lld; pass a positive length", seq_len);
        return NULL;
    }
    Py_buffer weight_view, bias_view, hidden_view, ids_view, probs_view, gw_view, gb_view;
    tq_mtp_heads heads;
    if (acquire_heads(weight, bias, model, &weight_view, &bias_view, &heads) != 0) {
        return NULL;
    }
    heads.vocab = vocab;
    PyObject *result = NULL;
    int acquired = 0;
    if (acquire(hidden_object, "hidden", 'f', 0, -1, &hidden_view) != 0) {
        goto release;
    }
    acquired = 1;
    const Py_ssize_t n = hidden_view.len / 4 / config->hidden;
    if (n < 1 || n * config->hidden * 4 != hidden_view.len || n % seq_len != 0) {
        PyErr_Format(PyExc_ValueError, "hidden has %zd elements; expected n_seqs * seq_len (%lld) rows of %d floats",
                     hidden_view.len / 4, seq_len, config->hidden);
        goto release;
    }
    if (acquire(ids_object, "teacher_ids", 'i', 0, -1, &ids_view) != 0) {
        goto release;
    }
    acquired = 2;
    const Py_ssize_t top_k = ids_view.len / 4 / n;
    if (top_k < 1 || top_k * n * 4 != ids_view.len) {
        PyErr_Format(PyExc_ValueError, "teacher_ids has %zd elements; expected %zd rows of top_k ids",
                     ids_view.len / 4, n);
        goto release;
    }
    if (acquire(probs_object, "teacher_probs", 'f', 0, n * top_k, &probs_view) != 0) {
        goto release;
    }
    acquired = 3;
    if (acquire(gw_object, "grad_weight", 'f', 1, (Py_ssize_t)heads.n_heads * heads.hidden * heads.hidden,
                &gw_view) != 0) {
        goto release;
    }
    acquired = 4;
    if (acquire(gb_object, "grad_bias", 'f', 1, (Py_ssize_t)heads.n_heads * heads.hidden, &gb_view) != 0) {
        goto release;
    }
    acquired = 5;

    tq_mtp_loss_params params = {(int)top_k, top_m, head_decay};
    tq_mtp_stats stats;
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_loss_grad(model, &heads, hidden_view.buf, n / seq_len, seq_len, ids_view.buf, probs_view.buf,
                              &params, gw_view.buf, gb_view.buf, &stats, &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto release;
    }
    PyObject *kl = PyList_New(heads.n_heads);
    PyObject *rows = PyList_New(heads.n_heads);
    PyObject *correct = PyList_New(heads.n_heads);
    PyObject *dropped = PyList_New(heads.n_heads);
    if (kl != NULL && rows != NULL && correct != NULL && dropped != NULL) {
        for (int k = 0; k < heads.n_heads; k++) {
            PyList_SET_ITEM(kl, k, PyFloat_FromDouble(stats.kl[k]));
            PyList_SET_ITEM(rows, k, PyLong_FromLongLong(stats.rows[k]));
            PyList_SET_ITEM(correct, k, PyLong_FromLongLong(stats.correct[k]));
            PyList_SET_ITEM(dropped, k, PyFloat_FromDouble(stats.dropped_mass[k]));
        }
        result = Py_BuildValue("{s:d,s:O,s:O,s:O,s:O}", "loss", stats.loss, "kl", kl, "rows", rows, "correct",
                               correct, "dropped_mass", dropped);
    }
    Py_XDECREF(kl);
    Py_XDECREF(rows);
    Py_XDECREF(correct);
    Py_XDECREF(dropped);
release:
    if (acquired >= 5) {
        PyBuffer_Release(&gb_view);
    }
    if (acquired >= 4) {
        PyBuffer_Release(&gw_view);
    }
    if (acquired >= 3) {
        PyBuffer_Release(&probs_view);
    }
    if (acquired >= 2) {
        PyBuffer_Release(&ids_view);
    }
    if (acquired >= 1) {
        PyBuffer_Release(&hidden_view);
    }
    PyBuffer_Release(&weight_view);
    PyBuffer_Release(&bias_view);
    return result;
}

static PyObject *py_mtp_adamw_update(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"param", "grad", "m", "v", "step", "lr", "beta1", "beta2", "eps", "weight_decay",
                               NULL};
    PyObject *objects[4];
    long long step;
    tq_mtp_adamw opt = {0.0, 0.9, 0.999, 1e-8, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOLd|dddd:mtp_adamw_update", keywords, &objects[0], &objects[1],
                                     &objects[2], &objects[3], &step, &opt.lr, &opt.beta1, &opt.beta2, &opt.eps,
                                     &opt.weight_decay)) {
        return NULL;
    }
    static const char *names[4] = {"param", "grad", "m", "v"};
    Py_buffer views[4];
    int acquired = 0;
    PyObject *result = NULL;
    for (; acquired < 4; acquired++) {
        const Py_ssize_t count = acquired == 0 ? -1 : views[0].len / 4;
        if (acquire(objects[acquired], names[acquired], 'f', acquired != 1, count, &views[acquired]) != 0) {
            goto release;
        }
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_adamw_update(views[0].buf, views[1].buf, views[2].buf, views[3].buf, views[0].len / 4, &opt, step,
                                 &err);
    Py_END_ALLOW_THREADS
    if (status != TQ_OK) {
        tq_py_raise(&err);
        goto release;
    }
    result = Py_None;
    Py_INCREF(result);
release:
    for (int i = 0; i < acquired; i++) {
        PyBuffer_Release(&views[i]);
    }
    return result;
}

static PyObject *py_mtp_clip_grad_norm(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"grads", "max_norm", NULL};
    PyObject *grads_object;
    double max_norm;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od:mtp_clip_grad_norm", keywords, &grads_object, &max_norm)) {
        return NULL;
    }
    PyObject *grads = PySequence_Fast(grads_object, "grads must be a sequence of float32 arrays");
    if (grads == NULL) {
        return NULL;
    }
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(grads);
    if (count < 1 || count > 16) {
        Py_DECREF(grads);
        PyErr_Format(PyExc_ValueError, "grads has %zd arrays; pass 1 to 16", count);
        return NULL;
    }
    Py_buffer views[16];
    float *pointers[16];
    int64_t sizes[16];
    Py_ssize_t acquired = 0;
    PyObject *result = NULL;
    for (; acquired < count; acquired++) {
        if (acquire(PySequence_Fast_GET_ITEM(grads, acquired), "grads item", 'f', 1, -1, &views[acquired]) != 0) {
            goto release;
        }
        pointers[acquired] = views[acquired].buf;
        sizes[acquired] = views[acquired].len / 4;
    }
    double norm;
    Py_BEGIN_ALLOW_THREADS
    norm = tq_mtp_clip_grad_norm(pointers, sizes, (int)count, max_norm);
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(norm);
release:
    for (Py_ssize_t i = 0; i < acquired; i++) {
        PyBuffer_Release(&views[i]);
    }
    Py_DECREF(grads);
    return result;
}

static PyObject *py_mtp_learning_rate(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"step", "warmup", "total_steps", "lr_max", "lr_min", NULL};
    long long step, warmup, total;
    double lr_max, lr_min = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLd|d:mtp_learning_rate", keywords, &step, &warmup, &total,
                                     &lr_max, &lr_min)) {
        return NULL;
    }
    if (step < 0 || warmup < 0 || total < 1) {
        PyErr_Format(PyExc_ValueError, "step %lld, warmup %lld and total_steps %lld must be >= 0, >= 0 and >= 1",
                     step, warmup, total);
        return NULL;
    }
    return PyFloat_FromDouble(tq_mtp_learning_rate(step, warmup, total, lr_max, lr_min));
}

static PyObject *py_mtp_lm_head(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *model_object;
    if (!PyArg_ParseTuple(args, "O:mtp_lm_head", &model_object)) {
        return NULL;
    }
    const tq_model *model = tq_py_model_get(model_object, "model");
    if (model == NULL) {
        return NULL;
    }
    const tq_weight *w = tq_mtp_lm_head(model);
    npy_intp dims[1] = {(npy_intp)(w->row_bytes * (size_t)w->n_out)};
    PyObject *array = PyArray_New(&PyArray_Type, 1, dims, NPY_UINT8, NULL, (void *)w->data, 0, 0, NULL);
    if (array == NULL) {
        return NULL;
    }
    PyArray_CLEARFLAGS((PyArrayObject *)array, NPY_ARRAY_WRITEABLE);
    Py_INCREF(model_object);
    if (PyArray_SetBaseObject((PyArrayObject *)array, model_object) != 0) {
        Py_DECREF(array);
        return NULL;
    }
    return Py_BuildValue("(Nill)", array, (int)w->type, (long)w->n_in, (long)w->n_out);
}

static PyObject *float_array(const float *values, int n_dims, const npy_intp *dims)
{
    if (values == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *array = PyArray_SimpleNew(n_dims, (npy_intp *)dims, NPY_FLOAT32);
    if (array != NULL) {
        memcpy(PyArray_DATA((PyArrayObject *)array), values, (size_t)PyArray_NBYTES((PyArrayObject *)array));
    }
    return array;
}

static PyObject *py_mtp_checkpoint_parse(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*:mtp_checkpoint_parse", &data)) {
        return NULL;
    }
    tq_mtp_checkpoint *c = NULL;
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_mtp_checkpoint_parse(data.buf, (size_t)data.len, &c, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    PyObject *vocab = Py_None;
    Py_INCREF(vocab);
    if (c->vocab != NULL) {
        const npy_intp length = (npy_intp)c->n_vocab_ids;
        Py_DECREF(vocab);
        vocab = PyArray_SimpleNew(1, &length, NPY_INT32);
        if (vocab == NULL) {
            tq_mtp_checkpoint_free(c);
            return NULL;
        }
        memcpy(PyArray_DATA((PyArrayObject *)vocab), c->vocab, (size_t)length * sizeof(int32_t));
    }
    const npy_intp matrix[3] = {c->n_heads, c->hidden, c->hidden};
    const npy_intp vector[2] = {c->n_heads, c->hidden};
    PyObject *result = Py_BuildValue(
        "{s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:L,s:L,s:L,s:s,s:s}", "vocab", vocab, "weight", float_array(c->weight, 3, matrix), "bias",
        float_array(c->bias, 2, vector), "adam_m_weight", float_array(c->adam_m_weight, 3, matrix), "adam_v_weight",
        float_array(c->adam_v_weight, 3, matrix), "adam_m_bias", float_array(c->adam_m_bias, 2, vector),
        "adam_v_bias", float_array(c->adam_v_bias, 2, vector), "step", (long long)c->step, "data_entry",
        (long long)c->data_entry, "data_token", (long long)c->data_token, "base_model", c->base_model, "settings",
        c->settings);
    tq_mtp_checkpoint_free(c);
    return result;
}

static PyMethodDef mtp_functions[] = {
    {"mtp_vocab", (PyCFunction)py_mtp_vocab, METH_VARARGS,
     "mtp_vocab(model, ids)\n\n"
     "A draft vocabulary: the model's LM-head rows of the strictly increasing int32 token ids, gathered once.\n"
     "Pass it as vocab= to score only those tokens; logit entry i is then token ids[i]."},
    {"mtp_forward", (PyCFunction)(void (*)(void))py_mtp_forward, METH_VARARGS | METH_KEYWORDS,
     "mtp_forward(model, weight, bias, hidden, *, residual=False, vocab=None)\n\n"
     "Logits of every Medusa head, float32 (n_heads, n, entries), for hidden (n, hidden_size) final hidden\n"
     "states after the output norm; entries is n_vocab, or the size of vocab (from mtp_vocab).\n"
     "residual=True returns (logits, g) with g = h + SiLU(W h + b)."},
    {"mtp_teacher", (PyCFunction)(void (*)(void))py_mtp_teacher, METH_VARARGS | METH_KEYWORDS,
     "mtp_teacher(model, hidden, top_k, *, vocab=None)\n\n"
     "The base model's top_k tokens per row of hidden: (ids int32 (n, top_k) by descending probability,\n"
     "probabilities renormalized to 1 (n, top_k), mass they had before renormalizing (n,)). With vocab, the\n"
     "distribution is the base softmax over its tokens and ids are its entries."},
    {"mtp_loss_grad", (PyCFunction)(void (*)(void))py_mtp_loss_grad, METH_VARARGS | METH_KEYWORDS,
     "mtp_loss_grad(model, weight, bias, hidden, seq_len, teacher_ids, teacher_probs, grad_weight, grad_bias,\n"
     "              student_top_m=4096, head_decay=0.8, vocab=None)\n\n"
     "Add the self-distillation gradient of sequences of seq_len rows of hidden to grad_weight and grad_bias\n"
     "(float32, written in place). With vocab, the heads score its tokens and teacher_ids are its entries\n"
     "(mtp_teacher with the same vocab). Returns a dict: loss, and per head kl, rows, correct, dropped_mass."},
    {"mtp_adamw_update", (PyCFunction)(void (*)(void))py_mtp_adamw_update, METH_VARARGS | METH_KEYWORDS,
     "mtp_adamw_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)\n\n"
     "One AdamW update of param and its moments m, v in place; step counts updates from 1."},
    {"mtp_clip_grad_norm", (PyCFunction)(void (*)(void))py_mtp_clip_grad_norm, METH_VARARGS | METH_KEYWORDS,
     "mtp_clip_grad_norm(grads, max_norm)\n\n"
     "Scale the float32 arrays grads in place so their global L2 norm is at most max_norm (no clipping for\n"
     "max_norm <= 0). Returns the norm before clipping."},
    {"mtp_learning_rate", (PyCFunction)(void (*)(void))py_mtp_learning_rate, METH_VARARGS | METH_KEYWORDS,
     "mtp_learning_rate(step, warmup, total_steps, lr_max, lr_min=0.0)\n\n"
     "Linear warm-up over warmup steps, then cosine decay to lr_min at total_steps (step is 0-based)."},
    {"mtp_lm_head", (PyCFunction)py_mtp_lm_head, METH_VARARGS,
     "mtp_lm_head(model)\n\n"
     "(raw bytes as a read-only uint8 array, ggml type, n_in, n_out) of the model's LM head."},
    {"mtp_checkpoint_parse", (PyCFunction)py_mtp_checkpoint_parse, METH_VARARGS,
     "mtp_checkpoint_parse(data)\n\n"
     "Validate a Medusa head checkpoint (bytes) and return a dict of its arrays and metadata.\n"
     "Raises ValueError with the reason for an invalid file."},
    {NULL, NULL, 0, NULL},
};

int tq_py_init_mtp(PyObject *module)
{
    import_array1(-1);
    return PyModule_AddFunctions(module, mtp_functions);
}
