// Conversions between Python arguments and the flat arrays of the C++ core.
#pragma once

#include <pybind11/pybind11.h>

#include <cctype>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "request_table.h"

namespace disagmoe {

namespace py = pybind11;

// Reads a list or tuple of ints, or a 1-D integer buffer (a numpy array), into
// `out`. Throws TypeError naming the bad element.
inline void read_ints(const char* op, const char* what, py::handle obj, std::vector<int64_t>& out) {
  PyObject* o = obj.ptr();
  if (PyList_Check(o) || PyTuple_Check(o)) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    PyObject** items = PySequence_Fast_ITEMS(o);
    out.resize(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
      if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::type_error(std::string(op) + ": " + what + "[" + std::to_string(i) + "]=" +
                             py::repr(items[i]).cast<std::string>() + " is not an int");
      }
      if (overflow)
        throw py::value_error(std::string(op) + ": " + what + "[" + std::to_string(i) + "]=" +
                              py::repr(items[i]).cast<std::string>() + " does not fit in int64");
      out[i] = v;
    }
    return;
  }
  if (PyObject_CheckBuffer(o)) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    char kind = info.format.empty() ? '?' : info.format.back();
    bool integral = std::string("bBhHiIlLqQ").find(kind) != std::string::npos;
    if (info.ndim != 1 || !integral)
      throw py::type_error(std::string(op) + ": " + what +
                           " must be a 1-D integer array, got format '" + info.format +
                           "' with " + std::to_string(info.ndim) + " dimensions");
    if (info.format[0] == '>' || info.format[0] == '!')
      throw py::type_error(std::string(op) + ": " + what +
                           " must be in native byte order, got format '" + info.format + "'");
    out.resize(info.shape[0]);
    const char* base = static_cast<const char*>(info.ptr);
    for (py::ssize_t i = 0; i < info.shape[0]; ++i) {
      const char* p = base + i * info.strides[0];
      switch (info.itemsize) {
        case 1: out[i] = std::islower(kind) ? *reinterpret_cast<const int8_t*>(p) : *reinterpret_cast<const uint8_t*>(p); break;
        case 2: out[i] = std::islower(kind) ? *reinterpret_cast<const int16_t*>(p) : *reinterpret_cast<const uint16_t*>(p); break;
        case 4: out[i] = std::islower(kind) ? *reinterpret_cast<const int32_t*>(p) : *reinterpret_cast<const uint32_t*>(p); break;
        default:
          if (!std::islower(kind) && *reinterpret_cast<const uint64_t*>(p) > INT64_MAX)
            throw py::value_error(std::string(op) + ": " + what + "[" + std::to_string(i) + "]=" +
                                  std::to_string(*reinterpret_cast<const uint64_t*>(p)) +
                                  " does not fit in int64");
          out[i] = *reinterpret_cast<const int64_t*>(p);
      }
    }
    return;
  }
  throw py::type_error(std::string(op) + ": " + what + " must be a list of ints or an integer array, got " +
                       py::repr(obj).cast<std::string>());
}

// The flat arrays behind one batch; reused from call to call.
struct BatchArgs {
  std::vector<int64_t> req_ids, prefill_lens;

  BatchView read(const char* op, py::handle ids, int64_t num_prefill, py::handle lens) {
    read_ints(op, "req_ids", ids, req_ids);
    read_ints(op, "init_prefill_lens", lens, prefill_lens);
    return {req_ids.data(), static_cast<int64_t>(req_ids.size()), num_prefill,
            prefill_lens.data(), static_cast<int64_t>(prefill_lens.size())};
  }
};

// A writable, C-contiguous buffer of T; throws ValueError naming it otherwise.
template <class T>
struct OutBuffer {
  T* data;
  int64_t size;
};

template <class T>
OutBuffer<T> out_buffer(const char* op, const char* what, py::buffer buf) {
  py::buffer_info info = buf.request(true);
  int64_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expected)
      throw py::value_error(std::string(op) + ": " + what + " must be C-contiguous");
    expected *= info.shape[d];
  }
  if (info.itemsize != static_cast<py::ssize_t>(sizeof(T)))
    throw py::value_error(std::string(op) + ": " + what + " must hold " +
                          std::to_string(sizeof(T)) + "-byte items, got " +
                          std::to_string(info.itemsize));
  return {static_cast<T*>(info.ptr), static_cast<int64_t>(info.size)};
}

// Python ints for 0..kCachedInts-1, made once: lengths are small non-negative
// ints, and building a list of them then costs a reference count each
// instead of an allocation each.
constexpr int32_t kCachedInts = 1 << 16;

inline PyObject* cached_int(int32_t v) {
  static std::vector<PyObject*> cache;
  if (v < 0 || v >= kCachedInts) return PyLong_FromLong(v);
  if (cache.empty()) cache.assign(kCachedInts, nullptr);
  PyObject*& slot = cache[v];
  if (!slot && !(slot = PyLong_FromLong(v))) return nullptr;
  Py_INCREF(slot);
  return slot;
}

inline py::list to_list(const int32_t* values, int64_t n) {
  PyObject* list = PyList_New(n);
  if (!list) throw py::error_already_set();
  for (int64_t i = 0; i < n; ++i) {
    PyObject* item = cached_int(values[i]);
    if (!item) {
      Py_DECREF(list);
      throw py::error_already_set();
    }
    PyList_SET_ITEM(list, i, item);
  }
  return py::reinterpret_steal<py::list>(list);
}

inline py::tuple stats_tuple(const BatchStats& s) {
  return py::make_tuple(s.num_tokens, s.max_query_len, s.max_seq_len, s.max_prefill_seq_len,
                        s.max_decode_seq_len, s.max_decode_query_len);
}

}  // namespace disagmoe
