#include "py_args.h"

#if PY_VERSION_HEX < 0x030B0000
#include <longintrepr.h>  // (PyLongObject's digits: in Python.h from 3.11 on)
#endif

#include <cctype>
#include <climits>

#include "sizes.h"

namespace disagmoe {

namespace {

// The value of an exact int of one digit (ids and lengths below 2**30: nearly all), read
// from the object without a call; false for any other int.
inline bool compact_value(PyObject* obj, int64_t* out) {
#if PY_VERSION_HEX >= 0x030C0000
  auto* number = reinterpret_cast<PyLongObject*>(obj);
  if (!PyUnstable_Long_IsCompact(number)) return false;
  *out = PyUnstable_Long_CompactValue(number);
  return true;
#else
  Py_ssize_t size = Py_SIZE(obj);
  if (size < -1 || size > 1) return false;
  int64_t digit = size ? reinterpret_cast<PyLongObject*>(obj)->ob_digit[0] : 0;
  *out = size < 0 ? -digit : digit;
  return true;
#endif
}

// A 0-d array or tensor of booleans (numpy's bool_ has no __index__; torch's does): its
// dtype says so. Reading it runs Python code only for objects that are not ints.
bool is_bool_array(PyObject* obj) {
  py::handle o(obj);
  if (!py::hasattr(o, "dtype")) return false;
  try {
    std::string dtype = py::str(o.attr("dtype"));
    return dtype == "torch.bool" || dtype == "bool";
  } catch (const py::error_already_set&) {
    return false;  // not an array's dtype: read it as the int it says it is
  }
}

std::string label(const char* name, Py_ssize_t index) {
  return index < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(index) + "]";
}

// Raises TypeError "op: what=<repr> is not an int" from the pending Python error,
// chained to it. An interrupt (an error that is not an Exception) passes unchanged.
[[noreturn]] void throw_not_int(const char* op, const std::string& what, PyObject* obj) {
  if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  std::string message = std::string(op) + ": " + what + "=" + safe_repr(obj) + " is not an int";
  PyErr_Restore(type, value, traceback);
  py::raise_from(PyExc_TypeError, message.c_str());
  throw py::error_already_set();
}

// The value of one int; `index` is the item's index in its list, or -1.
int64_t index_value(const char* op, const char* name, Py_ssize_t index, PyObject* obj) {
  py::object held;
  PyObject* number = obj;
  if (!PyLong_CheckExact(obj)) {
    if (PyBool_Check(obj) || is_bool_array(obj))
      throw py::type_error(std::string(op) + ": " + label(name, index) + "=" + safe_repr(obj) +
                           " is a bool, not an int");
    number = PyNumber_Index(obj);  // may run Python code: nothing of the call is shared
    if (!number) throw_not_int(op, label(name, index), obj);
    held = py::reinterpret_steal<py::object>(number);
  }
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(number, &overflow);
  if (overflow)
    throw py::value_error(std::string(op) + ": " + label(name, index) + "=" + safe_repr(obj) +
                          " does not fit in int64");
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

// A buffer's request that fails (a dtype the buffer protocol cannot describe) becomes a
// ValueError naming the argument.
py::buffer_info request_buffer(const char* op, const char* name, py::handle obj) {
  try {
    return py::reinterpret_borrow<py::buffer>(obj).request();
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_Exception)) throw;
    throw py::type_error(std::string(op) + ": " + name + "=" + safe_repr(obj) +
                         " cannot be read as an integer buffer (" +
                         py::str(e.value()).cast<std::string>() + ")");
  }
}

// The count of an argument's ints, refused by arithmetic before anything is allocated: a
// buffer may claim far more items than it has memory for (a stride of 0).
void check_count(const char* op, const char* name, int64_t n) {
  if (n > kMaxInt32)
    throw py::value_error(std::string(op) + ": " + name + " holds " + str(n) +
                          " ints, past the int32 range of a count (" + str(kMaxInt32) + ")");
}

void read_int_buffer(const char* op, const char* name, py::handle obj, Ints& ints) {
  py::buffer_info info = request_buffer(op, name, obj);
  char kind = info.format.empty() ? '?' : info.format.back();
  bool integral = std::string("bBhHiIlLqQnN").find(kind) != std::string::npos;
  if (info.ndim != 1 || !integral)
    throw py::type_error(std::string(op) + ": " + name +
                         " must be a 1-D integer array, got format '" + info.format + "' with " +
                         std::to_string(info.ndim) + " dimensions");
  if (info.format[0] == '>' || info.format[0] == '!')
    throw py::type_error(std::string(op) + ": " + name +
                         " must be in native byte order, got format '" + info.format + "'");
  check_count(op, name, info.shape[0]);
  int64_t* out = ints.resize(info.shape[0]);
  const char* base = static_cast<const char*>(info.ptr);
  bool is_signed = std::islower(kind);
  for (py::ssize_t i = 0; i < info.shape[0]; ++i) {
    const char* p = base + i * info.strides[0];
    switch (info.itemsize) {
      case 1:
        out[i] =
            is_signed ? *reinterpret_cast<const int8_t*>(p) : *reinterpret_cast<const uint8_t*>(p);
        break;
      case 2:
        out[i] = is_signed ? *reinterpret_cast<const int16_t*>(p)
                           : *reinterpret_cast<const uint16_t*>(p);
        break;
      case 4:
        out[i] = is_signed ? *reinterpret_cast<const int32_t*>(p)
                           : *reinterpret_cast<const uint32_t*>(p);
        break;
      case 8:
        if (!is_signed && *reinterpret_cast<const uint64_t*>(p) > INT64_MAX)
          throw py::value_error(std::string(op) + ": " + label(name, i) + "=" +
                                std::to_string(*reinterpret_cast<const uint64_t*>(p)) +
                                " does not fit in int64");
        out[i] = *reinterpret_cast<const int64_t*>(p);
        break;
      default:
        throw py::type_error(std::string(op) + ": " + name + " has " +
                             std::to_string(info.itemsize) + "-byte items, not 1, 2, 4 or 8");
    }
  }
}

}  // namespace

std::string safe_repr(py::handle obj) {
  constexpr size_t kMax = 80;
  std::string out;
  PyObject* repr = PyObject_Repr(obj.ptr());
  const char* text = nullptr;
  Py_ssize_t size = 0;
  if (repr) text = PyUnicode_AsUTF8AndSize(repr, &size);
  if (text) {
    out.assign(text, size);
  } else {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {  // a KeyboardInterrupt: not lost
      Py_XDECREF(repr);
      throw py::error_already_set();
    }
    PyErr_Clear();
    out = std::string("<") + Py_TYPE(obj.ptr())->tp_name + " object>";
  }
  Py_XDECREF(repr);
  if (out.size() > kMax) out = out.substr(0, kMax - 3) + "...";
  return out;
}

int64_t read_int(const char* op, const char* name, py::handle obj) {
  return index_value(op, name, -1, obj.ptr());
}

bool read_bool(const char* op, const char* name, py::handle obj) {
  if (obj.ptr() == Py_True) return true;
  if (obj.ptr() == Py_False) return false;
  throw py::type_error(std::string(op) + ": " + name + "=" + safe_repr(obj) +
                       " is not True or False");
}

void read_ints(const char* op, const char* name, py::handle obj, Ints& ints) {
  PyObject* o = obj.ptr();
  if (!PyList_Check(o) && !PyTuple_Check(o)) {
    if (PyObject_CheckBuffer(o)) return read_int_buffer(op, name, obj, ints);
    throw py::type_error(std::string(op) + ": " + name +
                         " must be a list of ints or an integer array, got " + safe_repr(obj));
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
  check_count(op, name, n);
  int64_t* out = ints.resize(n);
  PyObject** items = PySequence_Fast_ITEMS(o);
  Py_ssize_t i = 0;
  for (; i < n && PyLong_CheckExact(items[i]); ++i) {  // reading an int runs no Python code
    if (compact_value(items[i], out + i)) continue;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
    if (overflow)
      throw py::value_error(std::string(op) + ": " + label(name, i) + "=" + safe_repr(items[i]) +
                            " does not fit in int64");
    out[i] = v;
  }
  if (i == n) return;
  // Reading the other items may run Python code (an __index__), which may change
  // the list: read them from a tuple of the items as they are now, which holds them.
  py::object held = PyList_Check(o) ? py::reinterpret_steal<py::object>(PyList_AsTuple(o))
                                    : py::reinterpret_borrow<py::object>(o);
  if (!held) throw py::error_already_set();
  for (; i < n; ++i) out[i] = index_value(op, name, i, PyTuple_GET_ITEM(held.ptr(), i));
}

Batch::Batch(const char* op, py::handle ids, py::handle num_prefill_seqs,
             py::handle init_prefill_lens) {
  read_ints(op, "req_ids", ids, req_ids);
  num_prefill = read_int(op, "num_prefill_seqs", num_prefill_seqs);
  read_ints(op, "init_prefill_lens", init_prefill_lens, prefill_lens);
}

// Python ints for the lengths a step hands back, made once each and kept: lengths are
// non-negative ints below max_seq_len, a list of them then costs a reference count an
// item instead of an allocation. Kept in chunks of 4096, made as values are first met
// (a serving run meets a few ranges of them); values past kMaxCached are made anew.
constexpr int kChunkBits = 12;
constexpr int32_t kMaxCached = 1 << 22;

static PyObject* cached_int(int32_t v) {
  static std::vector<std::unique_ptr<PyObject*[]>> chunks(kMaxCached >> kChunkBits);
  if (v < 0 || v >= kMaxCached) return PyLong_FromLong(v);
  auto& chunk = chunks[v >> kChunkBits];
  if (!chunk) chunk.reset(new PyObject*[1 << kChunkBits]());
  PyObject*& entry = chunk[v & ((1 << kChunkBits) - 1)];
  if (!entry && !(entry = PyLong_FromLong(v))) return nullptr;
  Py_INCREF(entry);
  return entry;
}

py::list to_list(const int32_t* values, int64_t n) {
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

}  // namespace disagmoe
