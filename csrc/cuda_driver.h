// The few CUDA driver calls a step makes: a host-to-device copy, a graph launch, an
// event record. They are loaded from the driver library (libcuda.so.1) the first time
// a manager on a CUDA device asks, so the package builds without CUDA's headers and
// runs without a GPU. Torch's CUDA runtime sits on the same driver and the same
// primary contexts: a copy or a launch here is ordered with torch's work on a stream
// like any other. Every failed call throws CudaError naming the call and the driver's
// message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace disagmoe::cuda {

using Result = int;  // CUresult; 0 is success
using Stream = void*;
using Event = void*;
using Graph = void*;
using GraphExec = void*;
using Context = void*;
using DevicePtr = unsigned long long;

// The driver's CUDA_MEMCPY2D (v2), field for field.
struct Copy2D {
  size_t src_x_bytes, src_y;
  int src_memory_type;
  const void* src_host;
  DevicePtr src_device;
  void* src_array;
  size_t src_pitch;
  size_t dst_x_bytes, dst_y;
  int dst_memory_type;
  void* dst_host;
  DevicePtr dst_device;
  void* dst_array;
  size_t dst_pitch;
  size_t width_bytes, height;
};
constexpr int kHostMemory = 1, kDeviceMemory = 2;

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws CudaError unless `r` is success.
void check(Result r, const char* call);

// Whether the driver can be loaded here (a GPU machine); never throws.
bool available();

struct Api {
  Result (*init)(unsigned);
  Result (*device_get)(int*, int);
  Result (*primary_ctx_retain)(Context*, int);
  Result (*primary_ctx_release)(int);
  Result (*ctx_get_current)(Context*);
  Result (*ctx_push_current)(Context);
  Result (*ctx_pop_current)(Context*);
  Result (*memcpy_htod_async)(DevicePtr, const void*, size_t, Stream);
  Result (*memcpy_2d_async)(const Copy2D*, Stream);
  Result (*memcpy_dtod_async)(DevicePtr, DevicePtr, size_t, Stream);
  Result (*event_create)(Event*, unsigned);
  Result (*event_destroy)(Event);
  Result (*event_record)(Event, Stream);
  Result (*event_query)(Event);
  Result (*event_synchronize)(Event);
  Result (*stream_wait_event)(Stream, Event, unsigned);
  Result (*stream_begin_capture)(Stream, int);
  Result (*stream_end_capture)(Stream, Graph*);
  Result (*graph_instantiate)(GraphExec*, Graph, unsigned long long);
  Result (*graph_launch)(GraphExec, Stream);
  Result (*graph_exec_destroy)(GraphExec);
  Result (*graph_destroy)(Graph);
  Result (*get_error_string)(Result, const char**);
};

// The loaded driver; throws CudaError when it cannot be loaded.
const Api& api();

// A device's primary context (the one torch uses), retained while this lives, made
// current by ContextScope around every call that needs it.
class DeviceContext {
 public:
  explicit DeviceContext(int device);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
  Context get() const { return ctx_; }
  int device() const { return device_; }

 private:
  int device_;
  Context ctx_ = nullptr;
};

// Makes a context current for the scope, restoring the one before: a no-op (one
// read of the thread's current context) when it already is current.
class ContextScope {
 public:
  explicit ContextScope(const DeviceContext& ctx);
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  bool pushed_ = false;
};

// An event without timing: marks when the device has passed a point of a stream.
class EventHandle {
 public:
  EventHandle() = default;
  explicit EventHandle(const DeviceContext& ctx);
  ~EventHandle();
  EventHandle(EventHandle&& other) noexcept : event_(other.event_), recorded_(other.recorded_) {
    other.event_ = nullptr;
  }
  EventHandle& operator=(EventHandle&& other) noexcept;
  EventHandle(const EventHandle&) = delete;
  EventHandle& operator=(const EventHandle&) = delete;

  void record(Stream stream);
  // Waits for the device to pass the last record (returns at once if none).
  void synchronize();
  Event get() const { return event_; }

 private:
  Event event_ = nullptr;
  bool recorded_ = false;
};

// An instantiated CUDA graph, captured from a stream (begin_capture / end_capture).
class GraphHandle {
 public:
  explicit GraphHandle(GraphExec exec) : exec_(exec) {}
  ~GraphHandle();
  GraphHandle(const GraphHandle&) = delete;
  GraphHandle& operator=(const GraphHandle&) = delete;
  void launch(Stream stream) const;
  GraphExec get() const { return exec_; }

 private:
  GraphExec exec_;
};

// Starts capturing `stream` (relaxed: other threads, and this one, may go on with
// work of their own meanwhile).
void begin_capture(Stream stream);
// Ends the capture of `stream`; returns the graph instantiated, or null when
// `keep` is false (the capture is dropped).
GraphExec end_capture(Stream stream, bool keep);

}  // namespace disagmoe::cuda
