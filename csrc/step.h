// A manager's step path, native end to end. Each call reads its batch once, checks it
// against the books, and stages what the device needs in the next host buffer of a
// ring (pinned on CUDA); a pack then sends it with the driver: one copy of the metadata
// (`HostStep`, the cpu design) or one copy of the staged words and one CUDA graph
// launch (`DeviceStep`, the gpu and hybrid designs), and records the ring buffer's
// event. Python builds the metadata tensors from the sizes a pack returns.
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

#include "block_books.h"
#include "cuda_driver.h"

namespace disagmoe {

// The staged words of a device-table launch: a header of scalars, then the regions the
// launch's operations appended (each column of a region holds stride words). The
// kernels read everything from here.
namespace staged {
constexpr int32_t END = 0;  // words staged: the launch copies [0, END)
constexpr int32_t PACK_SIZE = 1, WIDTH = 2, NUM_TOKENS = 3, LOOKUP_AT = 4, LOOKUP_STRIDE = 5;
constexpr int32_t SLOTS_AT = 6;     // int64 word of slot_mapping in the metadata buffer
constexpr int32_t SEQ_LENS_AT = 7;  // int32 word of seq_lens there (then context_lens, ...)
constexpr int32_t UPDATE_SIZE = 8, HEIGHT = 9, PLAN_AT = 10, PLAN_STRIDE = 11, IDS_AT = 12;
constexpr int32_t RELEASE_SIZE = 13, RELEASE_HEIGHT = 14, RELEASE_AT = 15, RELEASE_STRIDE = 16;
constexpr int32_t TABLE_AT = 17;  // int32 word of the block table in the metadata buffer
constexpr int32_t HEADER = 32;
// Columns: lookup (rows, lengths, query lengths, query starts, seq starts); plan (rows,
// old lengths, new lengths, block offsets); release (rows, lengths, block offsets).
constexpr int32_t LOOKUP_COLUMNS = 5, PLAN_COLUMNS = 4, RELEASE_COLUMNS = 3;
// Words of one buffer with room for every region of max_reqs entries and `ids` block ids.
int64_t words(int64_t max_reqs, int64_t ids);
}  // namespace staged

// Launch flags: which kernels a launch holds (release runs first, pack last). kFused: the
// update is the pack's own batch (a first-layer step), and the pack kernel writes the
// new blocks into the rows as it reads them (one kernel for both).
constexpr int kRelease = 4, kUpdate = 2, kPack = 1, kFused = 8;
constexpr int kFlagSets = 16;

// The grid a launch of n entries runs on: the next power of two.
int64_t grid_of(int64_t n);

struct PackOutcome {
  bool hit = false;  // the caller's remembered pack `pack_id` answers
  int64_t pack_id = 0;
  BatchStats stats;                   // a new pack's
  const int32_t* seq_lens = nullptr;  // the lengths (either way), valid until the next call
};

// Called by a pack when a buffer cannot hold the batch's metadata: grow("host" |
// "device", nbytes) must replace it (set_buffer / set_out) with one of nbytes at least.
using Grow = std::function<void(const char* which, int64_t nbytes)>;

// What the step path of both designs shares: the ring's events and order, the last
// pack (to know the same batch at the next layer), the planned update.
class Step {
 public:
  // device: a CUDA device index, or -1 for torch's CPU device (nothing is sent).
  Step(RequestTable& table, int64_t depth, int device);
  virtual ~Step() = default;

  int64_t depth() const { return depth_; }
  int64_t current() const { return current_; }
  bool on_cuda() const { return ctx_ != nullptr; }
  int64_t packs() const { return packs_; }

  // First layer: checks the batch and returns its lengths after the update; commit()
  // then makes the update. Throws as RequestTable::plan_update.
  const int32_t* plan(const char* op, const BatchView& batch);
  int64_t planned_blocks() const { return planned_ ? plan_total_ : 0; }
  // Other layers: the batch's lengths (RequestTable::lookup).
  const int32_t* lengths(const char* op, const BatchView& batch);

  // Waits until the device has read every buffer of the ring.
  void wait_all();

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

  // The planned update: the batch as read, the plan, the books' version at planning.
  bool planned_ = false, committed_ = false;
  uint64_t plan_version_ = 0, committed_version_ = 0;
  std::vector<int64_t> plan_ids_, plan_lens_;
  int64_t plan_prefill_ = 0, plan_total_ = 0;
  std::vector<int32_t> plan_rows_, plan_old_, plan_new_, plan_offsets_;
  std::vector<int32_t> look_rows_, look_lens_, look_queries_;  // lengths()
};

// The cpu design: the core keeps the books and the tables on the host; a pack writes the
// metadata into the next ring buffer (block table rows at a fixed pitch, so a row stays
// where it was whatever the width: a decode step writes O(batch) words) and copies it
// into the device buffer laid out by metadata_layout (a 2D copy of the rows, one copy
// of the rest).
class HostStep : public Step {
 public:
  HostStep(BlockBooks& core, int64_t depth, int device);

  // Ring buffer k: its block table (max_reqs rows of max_blocks_per_seq words) and its
  // `head`, where the lengths and slot_mapping are laid out as in the metadata buffer
  // (the layout's bytes before the table). A table of at most kCompactBytes is gathered
  // there too, after them, and the whole metadata goes in one copy (a 2D copy of the
  // rows costs a call more): the head needs layout.block_tables bytes, and the table's
  // then.
  static constexpr int64_t kCompactBytes = 16384;
  void set_buffer(int64_t k, int32_t* table, uint8_t* head, int64_t head_bytes);
  // The device buffer (a host buffer on torch's CPU device) the metadata is copied into.
  void set_out(uint8_t* out, int64_t nbytes);

  void commit(const char* op);
  // The pack of `batch` at `layer`: a hit when it is the batch of the last pack, which
  // the caller remembers (`known` is that pack's id), at another layer, with nothing
  // changed since; else the metadata sent on `stream`.
  PackOutcome pack(const char* op, const BatchView& batch, int64_t layer, cuda::Stream stream,
                   int64_t known, const Grow& grow);
  void release(const char* op, const int64_t* req_ids, int64_t n);
  void reset();
  int64_t num_free_blocks() const override { return core_.num_free_blocks(); }

 private:
  void send(const MetadataLayout& l, cuda::Stream stream);

  BlockBooks& core_;
  int64_t pitch_;
  struct Buffer {
    int32_t* table = nullptr;
    uint8_t* head = nullptr;
    int64_t head_bytes = 0;
  };
  std::vector<Buffer> buffers_;
  uint8_t* out_ = nullptr;
  int64_t out_bytes_ = 0;
};

// The gpu and hybrid designs: the block tables live on the device (req_to_block), and a
// step stages only what changes: the plan of an update (and, hybrid, the ids of the
// blocks it adds: the host allocates), the rows and lengths of a release (gpu: the blocks
// go back to the device's free stack), the lookup of a pack. A first-layer update or a
// release is deferred into the launch of the pack that follows; anything that would
// overwrite what is staged launches it first.
class DeviceStep : public Step {
 public:
  using Launcher = std::function<void(int64_t buffer, int flags, int64_t grid)>;
  static int64_t graph_index(int flags, int64_t grid, int64_t buffer);

  // gpu: `table` keeps the books, `num_blocks` blocks on the device's free stack.
  DeviceStep(RequestTable& table, int64_t num_blocks, int64_t depth, int device);
  // hybrid: `core` keeps the books and allocates (host_allocates()).
  DeviceStep(BlockBooks& core, int64_t depth, int device);

  bool host_allocates() const { return core_ != nullptr; }
  // The core's free blocks (hybrid), or the height of the device's free stack (gpu).
  int64_t num_free_blocks() const override;

  // Ring buffer k (words, pinned on CUDA: the kernels read them there, over the bus), a
  // device twin every launch copies its words into first (for kernels that read device
  // memory only: torch's), the metadata buffer's bytes (the kernels write it).
  void set_buffer(int64_t k, int32_t* words, int64_t nwords);
  void set_twin(cuda::DevicePtr twin, int64_t nwords);
  void set_out_bytes(int64_t nbytes) { out_bytes_ = nbytes; }
  // gpu: the device's free stack and the stack as it starts (reset copies it back).
  void set_free_stack(uint8_t* stack, const uint8_t* initial);
  int64_t staged_capacity() const;  // words every buffer and the twin hold
  // A captured launch of these flags on `grid` programs reading ring buffer `buffer`;
  // launches without one call the launcher (eager kernels, and the capture of a graph
  // for next time).
  void set_graph(int flags, int64_t grid, int64_t buffer, const cuda::GraphHandle* graph);
  void clear_graphs();
  void set_launcher(Launcher launcher) { launcher_ = std::move(launcher); }

  void commit(const char* op, cuda::Stream stream);
  PackOutcome pack(const char* op, const BatchView& batch, int64_t layer, cuda::Stream stream,
                   int64_t known, const Grow& grow);
  void release(const char* op, const int64_t* req_ids, int64_t n, cuda::Stream stream);
  // Launches what is deferred, if anything. Changes nothing the books say, so a read may
  // flush while another call on the manager reads its arguments; never inside a launch.
  void flush(cuda::Stream stream);
  // Back to empty (what was staged is dropped); gpu: the free stack is restored on `stream`.
  void reset(cuda::Stream stream);

 private:
  int32_t* words() { return buffers_[current_].words; }
  // The current buffer, acquired and its header cleared, if nothing is staged yet.
  int32_t* staging();
  // Room for `n` words at the end of what is staged; throws when the buffer is too small.
  int64_t append(const char* op, int64_t n);
  void launch(cuda::Stream stream, bool pack, bool fused = false);

  BlockBooks* core_ = nullptr;  // hybrid
  int64_t stack_height_ = 0;    // gpu: the free stack's height
  int64_t num_blocks_ = 0;
  struct Buffer {
    int32_t* words = nullptr;
    int64_t nwords = 0;
  };
  std::vector<Buffer> buffers_;
  cuda::DevicePtr twin_ = 0;
  int64_t twin_words_ = 0;
  int64_t out_bytes_ = 0;
  uint8_t* free_stack_ = nullptr;  // gpu (device memory on CUDA)
  const uint8_t* initial_stack_ = nullptr;
  bool staged_ = false;   // the current buffer holds a deferred update or release
  bool in_call_ = false;  // a pack, commit, release or flush is under way (Python may run in it)
  struct InCall {
    bool& flag;
    explicit InCall(bool& f) : flag(f) { flag = true; }
    ~InCall() { flag = false; }
  };
  std::vector<const cuda::GraphHandle*>
      graphs_;  // [(buffer * kFlagSets + flags) * 32 + log2(grid)]
  Launcher launcher_;
  std::vector<int32_t> release_rows_, release_lens_;
};

}  // namespace disagmoe
