#include "cuda_driver.h"

#include <dlfcn.h>

namespace disagmoe::cuda {

namespace {

constexpr Result kNotReady = 600;       // CUDA_ERROR_NOT_READY
constexpr int kCaptureRelaxed = 2;      // CU_STREAM_CAPTURE_MODE_RELAXED
constexpr unsigned kDisableTiming = 2;  // CU_EVENT_DISABLE_TIMING

struct Loaded {
  Api api{};
  std::string error;  // why the driver could not be loaded, or empty
};

template <class F>
bool resolve(void* lib, const char* name, F& out, std::string& error) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out && error.empty()) error = std::string("the CUDA driver has no ") + name;
  return out != nullptr;
}

Loaded load() {
  Loaded l;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    l.error = "cannot load the CUDA driver (libcuda.so.1): no GPU on this machine?";
    return l;
  }
  Api& a = l.api;
  std::string& e = l.error;
  resolve(lib, "cuInit", a.init, e);
  resolve(lib, "cuDeviceGet", a.device_get, e);
  resolve(lib, "cuDevicePrimaryCtxRetain", a.primary_ctx_retain, e);
  resolve(lib, "cuDevicePrimaryCtxRelease_v2", a.primary_ctx_release, e);
  resolve(lib, "cuCtxGetCurrent", a.ctx_get_current, e);
  resolve(lib, "cuCtxPushCurrent_v2", a.ctx_push_current, e);
  resolve(lib, "cuCtxPopCurrent_v2", a.ctx_pop_current, e);
  resolve(lib, "cuMemcpyHtoDAsync_v2", a.memcpy_htod_async, e);
  resolve(lib, "cuMemcpy2DAsync_v2", a.memcpy_2d_async, e);
  resolve(lib, "cuMemcpyDtoDAsync_v2", a.memcpy_dtod_async, e);
  resolve(lib, "cuEventCreate", a.event_create, e);
  resolve(lib, "cuEventDestroy_v2", a.event_destroy, e);
  resolve(lib, "cuEventRecord", a.event_record, e);
  resolve(lib, "cuEventQuery", a.event_query, e);
  resolve(lib, "cuEventSynchronize", a.event_synchronize, e);
  resolve(lib, "cuStreamWaitEvent", a.stream_wait_event, e);
  resolve(lib, "cuStreamBeginCapture_v2", a.stream_begin_capture, e);
  resolve(lib, "cuStreamEndCapture", a.stream_end_capture, e);
  resolve(lib, "cuGraphInstantiateWithFlags", a.graph_instantiate, e);
  resolve(lib, "cuGraphLaunch", a.graph_launch, e);
  resolve(lib, "cuGraphExecDestroy", a.graph_exec_destroy, e);
  resolve(lib, "cuGraphDestroy", a.graph_destroy, e);
  resolve(lib, "cuGetErrorString", a.get_error_string, e);
  if (e.empty() && a.init(0) != 0) e = "cuInit failed: the CUDA driver found no usable GPU";
  return l;
}

const Loaded& loaded() {
  static const Loaded l = load();  // thread-safe, once
  return l;
}

}  // namespace

bool available() { return loaded().error.empty(); }

const Api& api() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw CudaError(l.error);
  return l.api;
}

void check(Result r, const char* call) {
  if (r == 0) return;
  const char* text = nullptr;
  if (available() && api().get_error_string(r, &text) != 0) text = nullptr;
  throw CudaError(std::string(call) + " failed: " + (text ? text : "CUDA error") + " (" +
                  std::to_string(r) + ")");
}

DeviceContext::DeviceContext(int device) : device_(device) {
  const Api& a = api();
  int dev = 0;
  check(a.device_get(&dev, device), "cuDeviceGet");
  check(a.primary_ctx_retain(&ctx_, dev), "cuDevicePrimaryCtxRetain");
  device_ = dev;
}

DeviceContext::~DeviceContext() {
  if (ctx_) api().primary_ctx_release(device_);  // errors at exit are not ours to report
}

ContextScope::ContextScope(const DeviceContext& ctx) {
  const Api& a = api();
  Context current = nullptr;
  check(a.ctx_get_current(&current), "cuCtxGetCurrent");
  if (current != ctx.get()) {
    check(a.ctx_push_current(ctx.get()), "cuCtxPushCurrent");
    pushed_ = true;
  }
}

ContextScope::~ContextScope() {
  if (pushed_) {
    Context popped;
    api().ctx_pop_current(&popped);
  }
}

EventHandle::EventHandle(const DeviceContext& ctx) {
  ContextScope scope(ctx);
  check(api().event_create(&event_, kDisableTiming), "cuEventCreate");
}

EventHandle::~EventHandle() {
  if (event_) api().event_destroy(event_);
}

EventHandle& EventHandle::operator=(EventHandle&& other) noexcept {
  if (this != &other) {
    if (event_) api().event_destroy(event_);
    event_ = other.event_;
    recorded_ = other.recorded_;
    other.event_ = nullptr;
  }
  return *this;
}

void EventHandle::record(Stream stream) {
  check(api().event_record(event_, stream), "cuEventRecord");
  recorded_ = true;
}

void EventHandle::synchronize() {
  if (!recorded_) return;
  const Api& a = api();
  Result r = a.event_query(event_);  // mostly done long ago: no wait
  if (r == kNotReady) r = a.event_synchronize(event_);
  check(r, "cuEventSynchronize");
}

GraphHandle::~GraphHandle() {
  if (exec_) api().graph_exec_destroy(exec_);
}

void GraphHandle::launch(Stream stream) const {
  check(api().graph_launch(exec_, stream), "cuGraphLaunch");
}

void begin_capture(Stream stream) {
  check(api().stream_begin_capture(stream, kCaptureRelaxed), "cuStreamBeginCapture");
}

GraphExec end_capture(Stream stream, bool keep) {
  const Api& a = api();
  Graph graph = nullptr;
  check(a.stream_end_capture(stream, &graph), "cuStreamEndCapture");
  GraphExec exec = nullptr;
  Result r = keep ? a.graph_instantiate(&exec, graph, 0) : 0;
  if (graph) a.graph_destroy(graph);
  check(r, "cuGraphInstantiate");
  return exec;
}

}  // namespace disagmoe::cuda
