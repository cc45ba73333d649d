// The gpu and hybrid designs' step path (step.h): the block tables on the device, a step
// staging only what changes, in words that a launch of the kernels reads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "block_books.h"
#include "prefix_cache.h"
#include "step.h"

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
// The prefix cache's moves (gpu): those before the update (PRE) and after the pack (POST),
// each MOVE_WORDS words (op, a, b, c).
constexpr int32_t PRE_SIZE = 18, PRE_AT = 19, POST_SIZE = 20, POST_AT = 21;
constexpr int32_t HEADER = 32;
constexpr int32_t MOVE_WORDS = 4;
constexpr int32_t MOVE_PUSH_ROW = 0;    // free_blocks[a] = req_to_block[b, c] (a release)
constexpr int32_t MOVE_MATCH = 1;       // req_to_block[a, b] = entry_block[c]
constexpr int32_t MOVE_PUSH_ENTRY = 2;  // free_blocks[a] = entry_block[c] (an eviction)
constexpr int32_t MOVE_INDEX = 3;       // entry_block[c] = req_to_block[a, b]
// Columns: lookup (rows, lengths, query lengths, query starts, seq starts); plan (rows,
// old lengths, new lengths, block offsets); release (rows, lengths, block offsets).
constexpr int32_t LOOKUP_COLUMNS = 5, PLAN_COLUMNS = 4, RELEASE_COLUMNS = 3;
// Words of one buffer with room for every region of max_reqs entries and `ids` block ids.
int64_t words(int64_t max_reqs, int64_t ids);
}  // namespace staged

// Launch flags (Python reads them as _C.LAUNCH_FLAGS): which kernels a launch holds
// (release runs first, pack last). kFused: the update is the pack's own batch (a
// first-layer step), and the pack kernel writes the new blocks into the rows as it reads
// them (one kernel for both).
// kPrefix: the prefix cache's moves (gpu), before the update and after the pack.
constexpr int kRelease = 4, kUpdate = 2, kPack = 1, kFused = 8, kPrefix = 16;
constexpr int kFlagSets = 32;

// The grid a launch of n entries runs on: the next power of two.
int64_t grid_of(int64_t n);

// Where the blocks a first-layer update adds come from, the one difference between the
// gpu and hybrid designs. kDeviceStack (gpu): the device's free stack, which the update
// kernel pops and a release's kernel pushes (the step mirrors its height); the books are
// a RequestTable. kHostBooks (hybrid): the host's BlockBooks, which allocate and free
// them (the step stages the new ids; a release is host work alone).
enum class BlockSource { kDeviceStack, kHostBooks };

// The gpu and hybrid designs: the block tables live on the device (req_to_block), and a
// step stages only what changes: the plan of an update (and, from the host books, the
// ids of the blocks it adds), the rows and lengths of a release (to the device stack),
// the lookup of a pack. A first-layer update or a release is deferred into the launch of
// the pack that follows; anything that would overwrite what is staged launches it first.
class DeviceStep : public Step {
 public:
  using Launcher = std::function<void(int64_t buffer, int flags, int64_t grid)>;
  static int64_t graph_index(int flags, int64_t grid, int64_t buffer);

  // kDeviceStack: `table` keeps the books, `num_blocks` blocks on the device's free stack.
  DeviceStep(RequestTable& table, int64_t num_blocks, int64_t depth, int device);
  // kHostBooks: `books` keep the books and allocate.
  DeviceStep(BlockBooks& books, int64_t depth, int device);

  BlockSource block_source() const { return source_; }
  // The kernel sets (launch flags) a launch of this step can hold.
  std::vector<int> flag_sets() const;
  // The host books' free blocks, or the height of the device's free stack.
  int64_t num_free_blocks() const override;

  // Every ring buffer (`depth` of them: words, pinned on CUDA, where the kernels read them
  // over the bus) and the device twin every launch copies its words into first (for kernels
  // that read device memory only: torch's; 0: none), at once: each throws unless it holds
  // staged::words(max_reqs, 0) words; all are set, or none.
  struct Words {
    int32_t* words = nullptr;
    int64_t nwords = 0;
  };
  void set_staging(const std::vector<Words>& buffers, cuda::DevicePtr twin, int64_t twin_words);
  void set_out_bytes(int64_t nbytes) { out_bytes_ = nbytes; }
  // kDeviceStack: the device's free stack and the stack as it starts (reset copies it back).
  // Throws unless both hold num_blocks int32, on a kDeviceStack step.
  void set_free_stack(uint8_t* stack, const uint8_t* initial, int64_t nbytes);
  int64_t staged_capacity() const;  // words every buffer and the twin hold
  // A captured launch of these flags on `grid` programs reading ring buffer `buffer`;
  // launches without one call the launcher (eager kernels, and the capture of a graph
  // for next time).
  void set_graph(int64_t flags, int64_t grid, int64_t buffer, const cuda::GraphHandle* graph);
  void clear_graphs();
  void set_launcher(Launcher launcher) { launcher_ = std::move(launcher); }

  void commit(const char* op, cuda::Stream stream);
  PackOutcome pack(const char* op, const BatchView& batch, int64_t layer, cuda::Stream stream,
                   int64_t known);
  void release(const char* op, const int64_t* req_ids, int64_t n, cuda::Stream stream);
  // Launches what is deferred, if anything. Changes nothing the books say, so a read may
  // flush while another call on the manager reads its arguments; never inside a launch.
  void flush(cuda::Stream stream);
  // Back to empty (what was staged is dropped); the device's free stack is restored on
  // `stream`.
  void reset(cuda::Stream stream);

  // kDeviceStack: the prefix cache (docs/prefix-caching.md), its index on the host over
  // entry ids, each entry's block in the device's entry_block (the kernels' moves).
  int64_t match_prefix(const char* op, int64_t req_id, const int64_t* hashes, int64_t n,
                       cuda::Stream stream);
  PrefixCacheStats prefix_cache_stats() const {
    return cache_ ? cache_->stats() : PrefixCacheStats{};
  }
  // Per position of the request's blocks: the cache entry it holds, or -1 (its own block).
  std::vector<int32_t> cached_entries(int64_t req_id) const;
  // The entries indexed now.
  std::vector<int32_t> indexed_entries() const;
  // Empty when the cache's books agree with the rows, else what is wrong.
  std::string check_prefix() const;

 private:
  DeviceStep(BlockSource source, RequestTable& table, BlockBooks* books, int64_t num_blocks,
             int64_t depth, int device);
  int32_t* words() { return buffers_[current_].words; }
  // Throws unless `nwords` hold every region of max_reqs entries (what `op` sets).
  void check_words(const char* op, int64_t nwords) const;
  // The current buffer, acquired and its header cleared, if nothing is staged yet.
  int32_t* staging();
  // Room for `n` words at the end of what is staged; throws when the buffer is too small.
  int64_t append(const char* op, int64_t n);
  void launch(cuda::Stream stream, bool pack, bool fused = false);

  const BlockSource source_;
  BlockBooks* books_ = nullptr;  // kHostBooks
  int64_t stack_height_ = 0;     // kDeviceStack: the free stack's height
  int64_t num_blocks_ = 0;
  std::vector<Words> buffers_;
  cuda::DevicePtr twin_ = 0;
  int64_t twin_words_ = 0;
  int64_t out_bytes_ = 0;
  uint8_t* free_stack_ = nullptr;  // kDeviceStack (device memory on CUDA)
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

  // The prefix cache (kDeviceStack), made at the first match_prefix.
  bool pre_last() const;  // nothing staged after the PRE moves (or none staged)
  int64_t append_moves(const char* op, int32_t size_word, int32_t at_word, int64_t n);
  void move(int64_t at, int32_t op, int64_t a, int64_t b, int64_t c);
  int64_t insertions_bound(const BatchView& b, const StepPlan& p) const;
  void evict(const char* op, int64_t count);
  void index_filled(const char* op, const BatchView& b, const StepPlan& p);
  // Stages the release of a row holding cached blocks; returns the blocks it frees.
  int64_t release_cached(int32_t row, int64_t count, int64_t at, int64_t height);
  std::unique_ptr<PrefixCache> cache_;
  int64_t width_ = 0;
  std::vector<int32_t> free_entries_;  // a stack
  std::vector<int32_t> row_entries_;   // [max_reqs, width]: an entry, or -1
  std::vector<int32_t> cached_in_row_;
  std::vector<std::vector<int64_t>> row_hashes_;
  int64_t rows_with_hashes_ = 0;
  bool pre_reads_rows_ = false;  // the staged PRE moves push a released row's blocks
};

}  // namespace disagmoe
