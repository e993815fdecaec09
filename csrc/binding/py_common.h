/* Helpers shared by the CPython binding files: exceptions from tq_error and
 * checked access to NumPy arrays through the buffer protocol (no copies). */
#ifndef TQ_PY_COMMON_H
#define TQ_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tq_common.h"

/* Raise the Python exception that matches err->status with err->message; returns NULL. */
PyObject *tq_py_raise(const tq_error *err);

/* A read-only view of a C-contiguous float32 array of shape (rows, cols). */
typedef struct {
    Py_buffer view;
    const float *data;
    Py_ssize_t rows;
    Py_ssize_t cols;
    int acquired;
} tq_py_matrix;

/* Acquire a buffer view of obj as a C-contiguous float32 matrix.
 * A 1-D array counts as one row. expected_cols < 0 accepts any width.
 * name appears in error messages ("x", "queries"). Returns 0, or -1 with an exception set. */
int tq_py_matrix_acquire(PyObject *obj, const char *name, Py_ssize_t expected_cols, tq_py_matrix *out);
void tq_py_matrix_release(tq_py_matrix *m);

/* Returns -1 with ValueError set when any value is NaN or infinite, naming the first one. */
int tq_py_check_finite(const tq_py_matrix *m, const char *name);

/* Copy a sequence of numbers (a list, tuple or 1-D array) into *out as floats, allocated
 * with PyMem_Malloc (the caller frees it), and its length into *count. name appears in error
 * messages. Returns 0, or -1 with TypeError for a non-number entry. */
int tq_py_float_sequence(PyObject *obj, const char *name, float **out, Py_ssize_t *count);

/* A _core.Tokenizer that uses tok without owning it: it keeps a reference to
 * owner, which must keep tok alive (a Model owns its tokenizer). Needs
 * tq_py_init_tokenizer to have run. Returns a new reference, or NULL with an
 * exception set. */
struct tq_tokenizer;
PyObject *tq_py_tokenizer_borrow(const struct tq_tokenizer *tok, PyObject *owner);

/* The C tokenizer of a _core.Tokenizer (or subclass) instance, which keeps it alive;
 * NULL with TypeError naming argument for another object. */
const struct tq_tokenizer *tq_py_tokenizer_get(PyObject *obj, const char *argument);

/* The C model of a _core.Model, or of the model behind a _core.Context; obj keeps it
 * alive. NULL with TypeError naming argument for another object. */
struct tq_model;
const struct tq_model *tq_py_model_get(PyObject *obj, const char *argument);

/* The draft vocabulary of a capsule from _core.mtp_vocab(model, ids), or NULL for None
 * (*ok = 1 either way). A capsule made for another model, or another object, sets *ok = 0
 * with TypeError or ValueError naming argument. The capsule keeps the vocabulary alive. */
struct tq_mtp_vocab_s;
const struct tq_mtp_vocab_s *tq_py_vocab_get(PyObject *obj, const struct tq_model *model, const char *argument,
                                             int *ok);

/* Register one binding file's types and functions on the module. */
int tq_py_init_quant(PyObject *module);
int tq_py_init_qjl_polar(PyObject *module);
int tq_py_init_weights(PyObject *module);
int tq_py_init_gguf(PyObject *module);
int tq_py_init_tokenizer(PyObject *module);
int tq_py_init_model(PyObject *module);
int tq_py_init_sampler(PyObject *module);
int tq_py_init_kv_codec(PyObject *module);
int tq_py_init_config(PyObject *module);
int tq_py_init_safetensors(PyObject *module);
int tq_py_init_mtp(PyObject *module);

#endif /* TQ_PY_COMMON_H */
