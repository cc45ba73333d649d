// Conversions between Python objects and the flat arrays of the C++ core.
//
// Every argument is read once, into values that the call owns, before the core
// runs; the core itself runs no Python code. So whatever Python code an argument
// runs while it is read (an __index__ that empties a list, or that steps another
// manager) cannot reach an operation half done, nor another call's arguments.
// Every failed conversion is a TypeError or ValueError that names the operation,
// the argument and its value.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "request_table.h"

namespace disagmoe {

namespace py = pybind11;

// repr(obj), cut to at most 80 characters. A repr that raises an Exception gives the type's
// name instead; anything else (a KeyboardInterrupt its Python code met) is thrown on.
std::string safe_repr(py::handle obj);

// An int argument: an int or an object with __index__ (numpy ints, 0-d integer
// tensors), never a bool, a float or a str. ValueError past int64.
int64_t read_int(const char* op, const char* name, py::handle obj);

// True or False, nothing else.
bool read_bool(const char* op, const char* name, py::handle obj);

// The ints of one argument, owned by the call that read them: inline up to
// kInline of them (reading a step's batch then allocates nothing), past that on
// the heap. Not copyable nor movable: data() may point into the object.
class Ints {
 public:
  static constexpr int64_t kInline = 512;

  Ints() = default;
  Ints(const Ints&) = delete;
  Ints& operator=(const Ints&) = delete;

  // Room for n ints, their values unset.
  int64_t* resize(int64_t n) {
    size_ = n;
    if (n > kInline) {
      heap_.reset(new int64_t[n]);
      data_ = heap_.get();
    } else {
      data_ = inline_;
    }
    return data_;
  }
  const int64_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  int64_t inline_[kInline];
  std::unique_ptr<int64_t[]> heap_;
  int64_t* data_ = inline_;
  int64_t size_ = 0;
};

// A list or tuple of ints (each as read_int reads it), or a 1-D integer buffer
// such as a numpy array, into `out`. A list is copied (its items held) before
// any item's __index__ runs. ValueError for more than 2**31 - 1 ints (by the count the
// object claims, before allocating); TypeError for a buffer of another kind (floats,
// datetimes, ...).
void read_ints(const char* op, const char* name, py::handle obj, Ints& out);

// One step's batch, read once into arrays that the call owns.
struct Batch {
  Ints req_ids, prefill_lens;
  int64_t num_prefill;

  Batch(const char* op, py::handle req_ids, py::handle num_prefill_seqs,
        py::handle init_prefill_lens);
  BatchView view() const {
    return {req_ids.data(), req_ids.size(), num_prefill, prefill_lens.data(), prefill_lens.size()};
  }
};

// The n values as a list of ints.
py::list to_list(const int32_t* values, int64_t n);

}  // namespace disagmoe
