// What the step paths of the designs share: the host step (host_step.h, the cpu design)
// and the device step (device_step.h, the gpu and hybrid designs). Each call reads its
// batch once, checks it against the books, and stages what the device needs in the next
// host buffer of a ring (pinned on CUDA); a pack then sends it with the driver and
// records the ring buffer's event. Python builds the metadata tensors from the sizes a
// pack returns.
//
// Every change happens inside one call, after every check: a call that throws changed
// nothing, and nothing that Python runs between two calls (an interrupt, a setter) can
// find a change half done. A first-layer update is planned (plan: checks, computes the
// lengths, changes nothing) and then committed (commit: only while the books' version
// is the one planned at).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "cuda_driver.h"
#include "request_table.h"

namespace disagmoe {

struct PackOutcome {
  bool hit = false;  // the caller's remembered pack `pack_id` answers
  int64_t pack_id = 0;
  BatchStats stats;                   // a new pack's
  const int32_t* seq_lens = nullptr;  // the lengths (either way), valid until the next call
};

// Called when a buffer cannot hold what a call stages in it: grow(which, nbytes) must
// replace the buffers `which` names with ones of nbytes at least. A pack's: "host" (the
// host step's ring buffer: set_buffer) and "device" (the metadata buffer: set_out,
// set_out_bytes); a device step's commit: "staging" (its ring buffers and twin).
using Grow = std::function<void(const char* which, int64_t nbytes)>;

// What the step path of both designs shares: the ring's events and order, the last
// pack (to know the same batch at the next layer), the planned update.
class Step {
 public:
  // device: a CUDA device index, or -1 for torch's CPU device (nothing is sent); depth:
  // buffers in the ring, 1 to kMaxDepth (1 on torch's CPU device, whatever is asked).
  static constexpr int64_t kMaxDepth = 16;
  Step(RequestTable& table, int64_t depth, int device);
  virtual ~Step() = default;

  int64_t depth() const { return depth_; }
  int64_t current() const { return current_; }
  bool on_cuda() const { return ctx_ != nullptr; }
  // How a call grows a buffer too small for it (Grow); set once, by the manager.
  void set_grow(Grow grow) { grow_ = std::move(grow); }

  // First layer: checks the batch and returns its lengths after the update; commit()
  // then makes the update. Throws as RequestTable::plan_update.
  const int32_t* plan(const char* op, const BatchView& batch);
  // Other layers: the batch's lengths (RequestTable::lookup).
  const int32_t* lengths(const char* op, const BatchView& batch);

  // Waits until the device has read every buffer of the ring.
  void wait_all();
  // The last pack is not remembered any more (its metadata buffer was replaced): the next
  // pack of any batch packs.
  void forget_pack() { memo_.valid = false; }

  // Blocks an update may take now.
  virtual int64_t num_free_blocks() const = 0;

 protected:
  // Throws unless a plan is pending and the books have not changed since.
  void check_planned(const char* op);
  // The plan was committed (its rows and lengths are the books' now).
  void committed() {
    committed_ = true;
    committed_version_ = table_.version();
  }
  // Whether `batch` is the one just committed, nothing changed since: a pack of it reads
  // its rows and lengths from the plan (no lookup).
  bool just_committed(const BatchView& batch) const;
  BatchView planned_batch() const;
  // Whether the caller's remembered pack (`known`) answers `batch` at `layer`: the last
  // pack's batch at another layer, the books at `version` since. Then `o` says so.
  bool remembered(const BatchView& batch, int64_t layer, uint64_t version, int64_t known,
                  PackOutcome& o);
  StepPlan planned_steps() {
    return {plan_rows_.data(), plan_old_.data(), plan_new_.data(), plan_offsets_.data()};
  }

  // Has grow_ replace the `which` buffers with ones of nbytes at least (op names the call).
  void grow(const char* op, const char* which, int64_t nbytes);

  // The current buffer, once the device has finished reading it.
  void wait_current();
  // The current buffer was handed to the device on `stream`: marks it, moves on.
  void advance(cuda::Stream stream);
  // Orders `stream` after the last launch when it is another stream than that one's.
  void follow_last(cuda::Stream stream);
  void restart();

  RequestTable& table_;
  int64_t depth_;
  int64_t current_ = 0;
  std::unique_ptr<cuda::DeviceContext> ctx_;
  std::vector<cuda::EventHandle> done_;  // per buffer: the device has read it
  cuda::Stream last_stream_ = nullptr;
  int64_t last_buffer_ = -1;

  // The last pack: the ints read, its layer, the books' version then.
  struct Memo {
    bool valid = false;
    std::vector<int64_t> req_ids, prefill_lens;
    std::vector<int32_t> seq_lens;
    int64_t num_prefill = 0, layer = 0;
    uint64_t version = 0;
    bool hit(const BatchView& batch, int64_t layer, uint64_t version) const;
    void remember(const BatchView& batch, const int32_t* lengths, int64_t layer, uint64_t version);
  } memo_;
  int64_t packs_ = 0;
  Grow grow_;

  // The planned update: the batch as read, the plan, the books' version at planning.
  bool planned_ = false, committed_ = false;
  uint64_t plan_version_ = 0, committed_version_ = 0;
  std::vector<int64_t> plan_ids_, plan_lens_;
  int64_t plan_prefill_ = 0, plan_total_ = 0;
  std::vector<int32_t> plan_rows_, plan_old_, plan_new_, plan_offsets_;
  std::vector<int32_t> look_rows_, look_lens_, look_queries_;  // lengths()
};

}  // namespace disagmoe
