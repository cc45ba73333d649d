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
#include <string>
#include <vector>

#include "request_table.h"

namespace disagmoe {

namespace py = pybind11;

// repr(obj), cut to at most 80 characters; never throws.
std::string safe_repr(py::handle obj);

// An int argument: an int or an object with __index__ (numpy ints, 0-d integer
// tensors), never a bool, a float or a str. ValueError past int64.
int64_t read_int(const char* op, const char* name, py::handle obj);

// True or False, nothing else.
bool read_bool(const char* op, const char* name, py::handle obj);

// A str argument.
std::string read_str(const char* op, const char* name, py::handle obj);

// A list or tuple of ints (each as read_int reads it), or a 1-D integer buffer
// such as a numpy array. A list is copied (its items held) before any item's
// __index__ runs.
std::vector<int64_t> read_ints(const char* op, const char* name, py::handle obj);

// One step's batch, read once into arrays that the call owns.
struct Batch {
  std::vector<int64_t> req_ids, prefill_lens;
  int64_t num_prefill;

  Batch(const char* op, py::handle req_ids, py::handle num_prefill_seqs,
        py::handle init_prefill_lens);
  BatchView view() const {
    return {req_ids.data(), static_cast<int64_t>(req_ids.size()), num_prefill, prefill_lens.data(),
            static_cast<int64_t>(prefill_lens.size())};
  }
};

// A writable, C-contiguous buffer of T, held for the call; ValueError otherwise.
template <class T>
struct OutBuffer {
  py::buffer_info info;
  T* data;
  int64_t size;
};

OutBuffer<uint8_t> out_bytes(const char* op, const char* name, py::handle obj, size_t itemsize);

template <class T>
OutBuffer<T> out_buffer(const char* op, const char* name, py::handle obj) {
  OutBuffer<uint8_t> raw = out_bytes(op, name, obj, sizeof(T));
  T* data = reinterpret_cast<T*>(raw.data);
  int64_t size = raw.size;
  return {std::move(raw.info), data, size};
}

// Throws unless a buffer of `size` entries holds `regions` regions of `stride`
// entries, each with room for `entries` entries (the product cannot overflow).
void check_regions(const char* op, const char* name, int64_t size, int64_t regions, int64_t stride,
                   int64_t entries);

// The n values as a list of ints.
py::list to_list(const int32_t* values, int64_t n);

}  // namespace disagmoe
