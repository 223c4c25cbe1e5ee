# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The float fields of decoded msgspec Structs read into a float64 matrix, compiled ahead of
time (for :mod:`serving.typed_batch`).

msgspec keeps a Struct's fields in object slots, each described by a member descriptor that
holds its byte offset (CPython's ``PyMemberDescrObject``). ``msgspec.structs.astuple`` built a
tuple per Struct for ``np.fromiter`` (10,000 Structs of 29 features: 6.3 ms in process); this
reads each float's slot at its offset instead (0.5 ms), after checking that the record is of
the Struct type the offsets belong to and that the slot holds a float.
"""

from types import MemberDescriptorType

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    PyObject* PyList_GET_ITEM(object, Py_ssize_t)
    bint PyFloat_CheckExact(PyObject*)
    double PyFloat_AS_DOUBLE(PyObject*)
    void* Py_TYPE(PyObject*)

cdef extern from "structmember.h":
    int T_OBJECT_EX


cdef class FloatFields:
    """Fields ``names`` of the Struct type ``cls``, all of type ``float``, read as matrix
    columns in that order."""

    cdef object cls
    cdef readonly Py_ssize_t width
    cdef Py_ssize_t* offsets

    def __init__(self, cls, names):
        if not isinstance(cls, type):
            raise TypeError(f"{cls!r} is not a class")
        offsets = []
        for name in names:
            descr = cls.__dict__.get(name)
            if type(descr) is not MemberDescriptorType or descr.__objclass__ is not cls:
                raise TypeError(f"{cls.__name__}.{name} is not an object slot of its own")
            member = (<PyMemberDescrObject*>descr).d_member
            if member.type != T_OBJECT_EX:
                raise TypeError(f"{cls.__name__}.{name} is not an object slot")
            offsets.append(member.offset)
        self.offsets = <Py_ssize_t*>PyMem_Malloc(max(1, len(offsets)) * sizeof(Py_ssize_t))
        if self.offsets == NULL:
            raise MemoryError()
        for j, offset in enumerate(offsets):
            self.offsets[j] = offset
        self.cls, self.width = cls, len(offsets)

    def __dealloc__(self):
        PyMem_Free(self.offsets)

    def matrix(self, list records, double[:, ::1] out):
        """``out[i, j]`` = field ``j`` of ``records[i]``; TypeError if a record is not of the
        Struct type or a field does not hold a float."""
        cdef Py_ssize_t n = len(records), width = self.width, i, j
        cdef PyObject* record
        cdef PyObject* value
        if out.shape[0] != n or out.shape[1] != width:
            raise ValueError(f"out is {out.shape[0]} x {out.shape[1]} for {n} x {width}")
        for i in range(n):
            record = PyList_GET_ITEM(records, i)
            if Py_TYPE(record) != <void*>self.cls:
                raise TypeError(f"record {i} is not a {self.cls.__name__}")
            for j in range(width):
                value = (<PyObject**>(<char*>record + self.offsets[j]))[0]
                if value == NULL or not PyFloat_CheckExact(value):
                    raise TypeError(f"field {j} of record {i} does not hold a float")
                out[i, j] = PyFloat_AS_DOUBLE(value)
