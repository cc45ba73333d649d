#include "device_step.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include "sizes.h"

namespace disagmoe {

int64_t staged::words(int64_t max_reqs, int64_t ids) {
  return HEADER + (LOOKUP_COLUMNS + PLAN_COLUMNS + RELEASE_COLUMNS) * (max_reqs + 1) + ids;
}

int64_t grid_of(int64_t n) {
  int64_t grid = 1;
  while (grid < n) grid <<= 1;
  return grid;
}

namespace {

int log2_of(int64_t grid) {
  int k = 0;
  while ((int64_t{1} << k) < grid) ++k;
  return k;
}

}  // namespace

DeviceStep::DeviceStep(RequestTable& table, int64_t num_blocks, int64_t depth, int device)
    : DeviceStep(BlockSource::kDeviceStack, table, nullptr, num_blocks, depth, device) {}

DeviceStep::DeviceStep(BlockBooks& books, int64_t depth, int device)
    : DeviceStep(BlockSource::kHostBooks, books.table(), &books, 0, depth, device) {}

DeviceStep::DeviceStep(BlockSource source, RequestTable& table, BlockBooks* books,
                       int64_t num_blocks, int64_t depth, int device)
    : Step(table, depth, device),
      source_(source),
      books_(books),
      stack_height_(num_blocks),
      num_blocks_(num_blocks) {
  buffers_.resize(depth_);
  graphs_.assign(depth_ * kFlagSets * 32, nullptr);
  release_rows_.resize(table.max_reqs() + 1);
  release_lens_.resize(table.max_reqs() + 1);
}

int64_t DeviceStep::num_free_blocks() const {
  return source_ == BlockSource::kHostBooks ? books_->num_free_blocks() : stack_height_;
}

std::vector<int> DeviceStep::flag_sets() const {
  int fused = kUpdate | kPack | kFused;
  if (source_ == BlockSource::kHostBooks)  // a release stages nothing
    return {kUpdate, kPack, kUpdate | kPack, fused};
  return {kPack,
          kUpdate,
          kUpdate | kPack,
          kRelease,
          kRelease | kPack,
          kRelease | kUpdate,
          kRelease | kUpdate | kPack,
          fused,
          kRelease | fused};
}

void DeviceStep::check_words(const char* op, int64_t nwords) const {
  int64_t needed = staged::words(table_.max_reqs(), 0);
  if (nwords < needed)
    throw std::invalid_argument(std::string(op) + ": a buffer of " + str(nwords) +
                                " words cannot hold the staged words of " + str(table_.max_reqs()) +
                                " requests (" + str(needed) + ")");
}

void DeviceStep::set_buffer(int64_t k, int32_t* words, int64_t nwords) {
  check_range("DeviceStep.set_buffer", "k", k, 0, depth_ - 1);
  check_words("DeviceStep.set_buffer", nwords);
  if (staged_ && k == current_) {
    if (buffers_[k].words[staged::UPDATE_SIZE] || buffers_[k].words[staged::RELEASE_SIZE])
      throw std::runtime_error("DeviceStep.set_buffer: buffer " + str(k) + " holds staged work");
    staged_ = false;  // acquired, nothing in it yet
  }
  buffers_[k] = {words, nwords};
}

void DeviceStep::set_free_stack(uint8_t* stack, const uint8_t* initial, int64_t nbytes) {
  const char* op = "DeviceStep.set_free_stack";
  if (source_ != BlockSource::kDeviceStack)
    throw std::invalid_argument(std::string(op) + ": the blocks come from the host books");
  if (nbytes < 4 * num_blocks_)
    throw std::invalid_argument(std::string(op) + ": stacks of " + str(nbytes) +
                                " bytes cannot hold " + str(num_blocks_) + " block ids");
  free_stack_ = stack;
  initial_stack_ = initial;
}

void DeviceStep::set_twin(cuda::DevicePtr twin, int64_t nwords) {
  check_words("DeviceStep.set_twin", nwords);
  twin_ = twin;
  twin_words_ = nwords;
}

int64_t DeviceStep::staged_capacity() const {
  int64_t n = twin_ ? twin_words_ : INT64_MAX;
  for (const Buffer& b : buffers_) n = std::min(n, b.nwords);
  return n;
}

int64_t DeviceStep::graph_index(int flags, int64_t grid, int64_t buffer) {
  return (buffer * kFlagSets + flags) * 32 + log2_of(grid);
}

void DeviceStep::set_graph(int64_t flags, int64_t grid, int64_t buffer,
                           const cuda::GraphHandle* graph) {
  check_range("DeviceStep.set_graph", "flags", flags, 1, kFlagSets - 1);
  check_range("DeviceStep.set_graph", "grid", grid, 1, int64_t{1} << 31);
  check_range("DeviceStep.set_graph", "buffer", buffer, 0, depth_ - 1);
  graphs_[graph_index(static_cast<int>(flags), grid, buffer)] = graph;
}

void DeviceStep::clear_graphs() { std::fill(graphs_.begin(), graphs_.end(), nullptr); }

int32_t* DeviceStep::staging() {
  if (!staged_) {
    wait_current();
    int32_t* w = words();
    std::fill(w, w + staged::HEADER, 0);
    w[staged::END] = staged::HEADER;
    staged_ = true;
  }
  return words();
}

int64_t DeviceStep::append(const char* op, int64_t n) {
  int64_t at = words()[staged::END];
  if (at + n > staged_capacity())
    throw std::runtime_error(std::string(op) + ": " + str(at + n) +
                             " staged words do not fit the staging buffers of " +
                             str(staged_capacity()) + " (grow them before)");
  return at;
}

void DeviceStep::commit(const char* op, cuda::Stream stream) {
  check_planned(op);
  BatchView b = planned_batch();
  StepPlan p = planned_steps();
  if (b.size == 0) {  // nothing to reserve, nothing to stage
    table_.commit_update(b, p);
    return;
  }
  bool from_books = source_ == BlockSource::kHostBooks;
  // A matched request's first update writes its row from block 0: its matched blocks too.
  int64_t matched = from_books && books_->any_unstaged() ? books_->matched_unstaged(b, p) : 0;
  int64_t ids = from_books ? plan_total_ + matched : 0;
  int64_t room = staged::words(table_.max_reqs(), ids);
  if (room > staged_capacity()) {  // the new ids do not fit: the buffers grow, nothing staged
    grow(op, "staging", 4 * room);
    if (table_.version() != plan_version_ || room > staged_capacity())
      throw std::runtime_error(std::string(op) + ": grow('staging', " + str(4 * room) +
                               ") changed the books or left the staging buffers too small");
  }
  InCall in(in_call_);
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  if (staged_ && words()[staged::UPDATE_SIZE] > 0) launch(stream, false);  // may throw: no change
  int32_t* w = staging();
  int64_t stride = b.size + 1;
  int64_t at = append(op, staged::PLAN_COLUMNS * stride + ids);
  if (from_books) {
    books_->commit_first_layer(b, p, plan_total_, w + at + staged::PLAN_COLUMNS * stride);
  } else {
    table_.commit_update(b, p);
    w[staged::HEIGHT] = static_cast<int32_t>(stack_height_);
    stack_height_ -= plan_total_;
  }
  copy_plan(p, {w + at, w + at + stride, w + at + 2 * stride, w + at + 3 * stride}, b.size);
  if (matched > 0)
    books_->stage_matched(b, p, w + at + stride, w + at + 3 * stride,
                          w + at + staged::PLAN_COLUMNS * stride);
  w[staged::UPDATE_SIZE] = static_cast<int32_t>(b.size);
  w[staged::PLAN_AT] = static_cast<int32_t>(at);
  w[staged::PLAN_STRIDE] = static_cast<int32_t>(stride);
  w[staged::IDS_AT] = static_cast<int32_t>(at + staged::PLAN_COLUMNS * stride);
  w[staged::END] = static_cast<int32_t>(at + staged::PLAN_COLUMNS * stride + ids);
  committed();
}

PackOutcome DeviceStep::pack(const char* op, const BatchView& batch, int64_t layer,
                             cuda::Stream stream, int64_t known) {
  InCall in(in_call_);
  PackOutcome o;
  uint64_t version = table_.version();
  if (remembered(batch, layer, version, known, o)) return o;
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  int32_t* w = staging();
  // The lookup writes at most max_reqs entries (a batch of more throws before).
  int64_t stride = std::min(batch.size, table_.max_reqs()) + 1;
  int64_t at = append(op, staged::LOOKUP_COLUMNS * stride);
  int32_t* c = w + at;
  BatchLookup out{c, c + stride, c + 2 * stride, c + 3 * stride, c + 4 * stride};
  o.stats = just_committed(batch) ? table_.lookup_planned(batch, planned_steps(), out)
                                  : table_.lookup(op, batch, out);
  MetadataLayout l = metadata_layout(batch.size, o.stats.width, o.stats.num_tokens);
  if (l.nbytes / 4 > kMaxInt32)
    throw std::invalid_argument(std::string(op) + ": the batch's metadata needs " + str(l.nbytes) +
                                " bytes, past what a launch addresses");
  if (l.nbytes > out_bytes_) grow(op, "device", l.nbytes);
  if (l.nbytes > out_bytes_)
    throw std::runtime_error(std::string(op) + ": grow() left the metadata buffer too small");
  int32_t end = w[staged::END];
  w[staged::PACK_SIZE] = static_cast<int32_t>(batch.size);
  w[staged::WIDTH] = static_cast<int32_t>(o.stats.width);
  w[staged::NUM_TOKENS] = static_cast<int32_t>(o.stats.num_tokens);
  w[staged::LOOKUP_AT] = static_cast<int32_t>(at);
  w[staged::LOOKUP_STRIDE] = static_cast<int32_t>(stride);
  w[staged::SLOTS_AT] = static_cast<int32_t>(l.slot_mapping / 8);
  w[staged::SEQ_LENS_AT] = static_cast<int32_t>(l.seq_lens / 4);
  w[staged::TABLE_AT] = static_cast<int32_t>(l.block_tables / 4);
  w[staged::END] = static_cast<int32_t>(at + staged::LOOKUP_COLUMNS * stride);
  // The update staged with this pack is of this very batch (a first-layer step): the pack
  // kernel takes it over.
  bool fused = w[staged::UPDATE_SIZE] > 0 && just_committed(batch);
  try {
    launch(stream, true, fused);
  } catch (...) {  // the deferred work stays staged, the pack is undone
    w[staged::PACK_SIZE] = 0;
    w[staged::END] = end;
    throw;
  }
  o.pack_id = ++packs_;
  o.seq_lens = c + stride;  // the lookup's lengths, in the buffer just launched
  memo_.remember(batch, o.seq_lens, layer, version);
  return o;
}

void DeviceStep::release(const char* op, const int64_t* req_ids, int64_t n, cuda::Stream stream) {
  if (source_ == BlockSource::kHostBooks) {  // a row's stale device entries are never read
    books_->release_seqs(op, req_ids, n);
    return;
  }
  if (n == 0) return;
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  // Release runs first in a launch: an update staged before this release must run
  // before it, and two releases do not share one launch.
  flush(stream);
  InCall in(in_call_);
  int32_t* w = staging();
  // At most max_reqs distinct running requests: a longer list throws before past them.
  table_.release_seqs(op, req_ids, n, release_rows_.data(), release_lens_.data());
  int64_t stride = n + 1;
  int64_t at = append(op, staged::RELEASE_COLUMNS * stride);
  int64_t blocks = 0;
  for (int64_t i = 0; i < n; ++i) {
    w[at + i] = release_rows_[i];
    w[at + stride + i] = release_lens_[i];
    w[at + 2 * stride + i] = static_cast<int32_t>(blocks);
    blocks += table_.blocks_of(release_lens_[i]);
  }
  w[staged::RELEASE_SIZE] = static_cast<int32_t>(n);
  w[staged::RELEASE_HEIGHT] = static_cast<int32_t>(stack_height_);
  w[staged::RELEASE_AT] = static_cast<int32_t>(at);
  w[staged::RELEASE_STRIDE] = static_cast<int32_t>(stride);
  w[staged::END] = static_cast<int32_t>(at + staged::RELEASE_COLUMNS * stride);
  stack_height_ += blocks;
}

void DeviceStep::flush(cuda::Stream stream) {
  if (in_call_)
    throw std::runtime_error(
        "flush: another call on this manager is under way (calls on one manager must not "
        "overlap)");
  InCall in(in_call_);
  if (!staged_) return;
  const int32_t* w = words();
  if (w[staged::UPDATE_SIZE] == 0 && w[staged::RELEASE_SIZE] == 0) return;
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  launch(stream, false);
}

void DeviceStep::launch(cuda::Stream stream, bool pack, bool fused) {
  int32_t* w = words();
  int flags = (w[staged::RELEASE_SIZE] > 0 ? kRelease : 0) |
              (w[staged::UPDATE_SIZE] > 0 ? kUpdate : 0) | (pack ? kPack : 0) |
              (fused ? kFused : 0);
  if (!flags) return;
  int64_t grid = grid_of(std::max({w[staged::RELEASE_SIZE], w[staged::UPDATE_SIZE],
                                   pack ? w[staged::PACK_SIZE] : 0, int32_t{1}}));
  if (on_cuda()) {
    follow_last(stream);
    if (twin_)
      cuda::check(cuda::api().memcpy_htod_async(twin_, w, 4 * int64_t{w[staged::END]}, stream),
                  "cuMemcpyHtoDAsync");
  }
  const cuda::GraphHandle* graph = graphs_[graph_index(flags, grid, current_)];
  if (graph) {
    graph->launch(stream);
  } else {
    if (!launcher_) throw std::runtime_error("DeviceStep: no launcher was set");
    launcher_(current_, flags, grid);
  }
  advance(stream);
  staged_ = false;
}

void DeviceStep::reset(cuda::Stream stream) {
  bool from_stack = source_ == BlockSource::kDeviceStack;
  if (from_stack && free_stack_) {  // first: the one step that can fail
    int64_t nbytes = 4 * num_blocks_;
    if (on_cuda()) {
      cuda::ContextScope scope(*ctx_);
      follow_last(stream);
      cuda::check(cuda::api().memcpy_dtod_async(reinterpret_cast<cuda::DevicePtr>(free_stack_),
                                                reinterpret_cast<cuda::DevicePtr>(initial_stack_),
                                                nbytes, stream),
                  "cuMemcpyDtoDAsync");
    } else {
      std::memcpy(free_stack_, initial_stack_, nbytes);
    }
  }
  if (from_stack)
    table_.reset_state();
  else
    books_->reset_state();
  stack_height_ = num_blocks_;
  staged_ = false;
  restart();
}

}  // namespace disagmoe
