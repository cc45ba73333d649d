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
  if (source_ == BlockSource::kHostBooks) return books_->num_free_blocks();
  return cache_ ? stack_height_ + cache_->num_evictable() : stack_height_;
}

std::vector<int> DeviceStep::flag_sets() const {
  int fused = kUpdate | kPack | kFused;
  if (source_ == BlockSource::kHostBooks)  // a release stages nothing
    return {kUpdate, kPack, kUpdate | kPack, fused};
  std::vector<int> sets = {kPack,
                           kUpdate,
                           kUpdate | kPack,
                           kRelease,
                           kRelease | kPack,
                           kRelease | kUpdate,
                           fused,
                           kRelease | kUpdate | kPack,
                           kRelease | fused};
  int64_t n = static_cast<int64_t>(sets.size());
  sets.push_back(kPrefix);  // the moves of a match alone
  for (int64_t k = 0; k < n; ++k) sets.push_back(sets[k] | kPrefix);
  return sets;
}

void DeviceStep::check_words(const char* op, int64_t nwords) const {
  int64_t needed = staged::words(table_.max_reqs(), 0);
  if (nwords < needed)
    throw std::invalid_argument(std::string(op) + ": a buffer of " + str(nwords) +
                                " words cannot hold the staged words of " + str(table_.max_reqs()) +
                                " requests (" + str(needed) + ")");
}

void DeviceStep::set_staging(const std::vector<Words>& buffers, cuda::DevicePtr twin,
                             int64_t twin_words) {
  const char* op = "DeviceStep.set_staging";
  if (static_cast<int64_t>(buffers.size()) != depth_)
    throw std::invalid_argument(std::string(op) + ": " + str(buffers.size()) +
                                " buffers for a ring of " + str(depth_));
  for (const Words& b : buffers) check_words(op, b.nwords);
  if (twin) check_words(op, twin_words);
  if (staged_) {
    const int32_t* w = buffers_[current_].words;
    if (w[staged::UPDATE_SIZE] || w[staged::RELEASE_SIZE] || w[staged::PRE_SIZE] ||
        w[staged::POST_SIZE])
      throw std::runtime_error(std::string(op) + ": buffer " + str(current_) +
                               " holds staged work");
    staged_ = false;  // acquired, nothing in it yet
  }
  buffers_ = buffers;
  twin_ = twin;
  twin_words_ = twin ? twin_words : 0;
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

int64_t DeviceStep::staged_capacity() const {
  int64_t n = twin_ ? twin_words_ : INT64_MAX;
  for (const Words& b : buffers_) n = std::min(n, b.nwords);
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
  int64_t evictions = 0;
  if (cache_) {  // the moves: those staged, the evictions, at most this many insertions
    evictions = std::max<int64_t>(0, plan_total_ - stack_height_);
    int64_t staged_moves = staged_ ? words()[staged::PRE_SIZE] : 0;
    room += staged::MOVE_WORDS * (staged_moves + evictions + insertions_bound(b, p));
  }
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
  if (evictions > 0) evict(op, evictions);  // (after the launch above: the PRE moves are last)
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
  if (rows_with_hashes_ > 0) index_filled(op, b, p);
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
  int64_t blocks = 0, size = 0, pushed = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t row = release_rows_[i];
    if (cache_ && (cached_in_row_[row] > 0 || !row_hashes_[row].empty())) continue;  // below
    w[at + size] = row;
    w[at + stride + size] = release_lens_[i];
    w[at + 2 * stride + size] = static_cast<int32_t>(blocks);
    blocks += table_.blocks_of(release_lens_[i]);
    ++size;
  }
  w[staged::END] = static_cast<int32_t>(at + staged::RELEASE_COLUMNS * stride);
  if (size < n) {  // the rows holding cached blocks: their own blocks pushed as moves
    int64_t moves = 0;
    for (int64_t i = 0; i < n; ++i)
      if (cached_in_row_[release_rows_[i]] > 0 || !row_hashes_[release_rows_[i]].empty())
        moves += table_.blocks_of(release_lens_[i]);  // at most this many own blocks
    int64_t m = append_moves(op, staged::PRE_SIZE, staged::PRE_AT, moves);
    for (int64_t i = 0; i < n; ++i) {
      int32_t row = release_rows_[i];
      if (cached_in_row_[row] == 0 && row_hashes_[row].empty()) continue;
      pushed += release_cached(row, table_.blocks_of(release_lens_[i]),
                               m + staged::MOVE_WORDS * pushed, stack_height_ + blocks + pushed);
    }
    w[staged::PRE_SIZE] = static_cast<int32_t>(pushed);
    w[staged::END] = static_cast<int32_t>(m + staged::MOVE_WORDS * pushed);
    pre_reads_rows_ = pushed > 0;
  }
  w[staged::RELEASE_SIZE] = static_cast<int32_t>(size);
  w[staged::RELEASE_HEIGHT] = static_cast<int32_t>(stack_height_);
  w[staged::RELEASE_AT] = static_cast<int32_t>(at);
  w[staged::RELEASE_STRIDE] = static_cast<int32_t>(stride);
  stack_height_ += blocks + pushed;
}

void DeviceStep::flush(cuda::Stream stream) {
  if (in_call_)
    throw std::runtime_error(
        "flush: another call on this manager is under way (calls on one manager must not "
        "overlap)");
  InCall in(in_call_);
  if (!staged_) return;
  const int32_t* w = words();
  if (w[staged::UPDATE_SIZE] == 0 && w[staged::RELEASE_SIZE] == 0 && w[staged::PRE_SIZE] == 0 &&
      w[staged::POST_SIZE] == 0)
    return;
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  launch(stream, false);
}

void DeviceStep::launch(cuda::Stream stream, bool pack, bool fused) {
  int32_t* w = words();
  int flags = (w[staged::RELEASE_SIZE] > 0 ? kRelease : 0) |
              (w[staged::UPDATE_SIZE] > 0 ? kUpdate : 0) | (pack ? kPack : 0) |
              (fused ? kFused : 0) |
              (w[staged::PRE_SIZE] > 0 || w[staged::POST_SIZE] > 0 ? kPrefix : 0);
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
  pre_reads_rows_ = false;
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
  if (cache_) {
    cache_->reset();
    free_entries_.resize(num_blocks_);
    for (int64_t e = 0; e < num_blocks_; ++e)
      free_entries_[e] = static_cast<int32_t>(num_blocks_ - 1 - e);
    std::fill(row_entries_.begin(), row_entries_.end(), -1);
    std::fill(cached_in_row_.begin(), cached_in_row_.end(), 0);
    for (auto& hashes : row_hashes_) hashes.clear();
    rows_with_hashes_ = 0;
  }
  stack_height_ = num_blocks_;
  staged_ = false;
  pre_reads_rows_ = false;
  restart();
}

// -- the prefix cache (kDeviceStack) ------------------------------------------------------

bool DeviceStep::pre_last() const {
  const int32_t* w = buffers_[current_].words;
  return !staged_ || w[staged::PRE_SIZE] == 0 ||
         w[staged::PRE_AT] + staged::MOVE_WORDS * w[staged::PRE_SIZE] == w[staged::END];
}

int64_t DeviceStep::append_moves(const char* op, int32_t size_word, int32_t at_word, int64_t n) {
  int32_t* w = words();
  int64_t at = append(op, staged::MOVE_WORDS * n);
  if (w[size_word] == 0) w[at_word] = static_cast<int32_t>(at);
  return at;  // the first of the n moves (after those of the region, which ends here)
}

void DeviceStep::move(int64_t at, int32_t op, int64_t a, int64_t b, int64_t c) {
  int32_t* w = words() + at;
  w[0] = op;
  w[1] = static_cast<int32_t>(a);
  w[2] = static_cast<int32_t>(b);
  w[3] = static_cast<int32_t>(c);
}

int64_t DeviceStep::insertions_bound(const BatchView& b, const StepPlan& p) const {
  if (rows_with_hashes_ == 0) return 0;
  int64_t bound = 0;
  for (int64_t i = 0; i < b.size; ++i) {
    int32_t row = p.rows[i];
    if (row < 0) continue;  // a new request holds no hashes
    int64_t n = static_cast<int64_t>(row_hashes_[row].size());
    int64_t first = table_.block_of(p.old_lens[i]);
    bound += std::max<int64_t>(0, std::min(table_.block_of(p.new_lens[i]), n) - first);
  }
  return bound;
}

void DeviceStep::evict(const char* op, int64_t count) {
  int32_t* w = words();
  int64_t at = append_moves(op, staged::PRE_SIZE, staged::PRE_AT, count);
  for (int64_t k = 0; k < count; ++k) {
    int32_t entry = cache_->evict();
    free_entries_.push_back(entry);
    move(at + staged::MOVE_WORDS * k, staged::MOVE_PUSH_ENTRY, stack_height_ + k, 0, entry);
  }
  w[staged::PRE_SIZE] += static_cast<int32_t>(count);
  w[staged::END] = static_cast<int32_t>(at + staged::MOVE_WORDS * count);
  stack_height_ += count;
}

void DeviceStep::index_filled(const char* op, const BatchView& b, const StepPlan& p) {
  int32_t* w = words();
  int64_t at = append_moves(op, staged::POST_SIZE, staged::POST_AT, insertions_bound(b, p));
  int64_t count = 0;
  for (int64_t i = 0; i < b.size; ++i) {
    int32_t row = p.rows[i];
    const std::vector<int64_t>& hashes = row_hashes_[row];
    int64_t n = static_cast<int64_t>(hashes.size());
    int64_t last = std::min(table_.block_of(p.new_lens[i]), n);
    for (int64_t k = table_.block_of(p.old_lens[i]); k < last; ++k) {
      if (cache_->count_hits(&hashes[k], 1) > 0) continue;  // the first filler stays indexed
      int32_t entry = free_entries_.back();
      free_entries_.pop_back();
      cache_->insert(hashes[k], entry);
      row_entries_[row * width_ + k] = entry;
      ++cached_in_row_[row];
      move(at + staged::MOVE_WORDS * count, staged::MOVE_INDEX, row, k, entry);
      ++count;
    }
  }
  w[staged::POST_SIZE] = static_cast<int32_t>(count);
  w[staged::END] = static_cast<int32_t>(at + staged::MOVE_WORDS * count);
}

int64_t DeviceStep::release_cached(int32_t row, int64_t count, int64_t at, int64_t height) {
  int32_t* entries = row_entries_.data() + row * width_;
  int64_t pushed = 0;
  for (int64_t k = 0; k < count; ++k) {
    if (entries[k] >= 0) continue;
    move(at + staged::MOVE_WORDS * pushed, staged::MOVE_PUSH_ROW, height + pushed, row, k);
    ++pushed;
  }
  for (int64_t k = count - 1; k >= 0; --k)  // the last first: a prompt's tail is evicted first
    if (entries[k] >= 0) {
      cache_->release(entries[k]);
      entries[k] = -1;
    }
  cached_in_row_[row] = 0;
  if (!row_hashes_[row].empty()) {
    row_hashes_[row].clear();
    --rows_with_hashes_;
  }
  return pushed;
}

int64_t DeviceStep::match_prefix(const char* op, int64_t req_id, const int64_t* hashes, int64_t n,
                                 cuda::Stream stream) {
  if (source_ != BlockSource::kDeviceStack)
    throw std::logic_error(std::string(op) + ": the host books keep this step's prefix cache");
  table_.check_match(op, req_id, n);
  int64_t bs = table_.block_size();
  if (!cache_) {  // the first match: the cache, and staging room for any release's moves
    width_ = table_.blocks_of(table_.max_seq_len());
    int64_t room = staged::words(table_.max_reqs(), 0) + staged::MOVE_WORDS * num_blocks_;
    if (room > staged_capacity()) grow(op, "staging", 4 * room);
    if (room > staged_capacity())
      throw std::runtime_error(std::string(op) + ": grow() left the staging buffers too small");
    auto cache = std::make_unique<PrefixCache>(num_blocks_);
    free_entries_.resize(num_blocks_);
    for (int64_t e = 0; e < num_blocks_; ++e)
      free_entries_[e] = static_cast<int32_t>(num_blocks_ - 1 - e);
    row_entries_.assign(table_.max_reqs() * width_, -1);
    cached_in_row_.assign(table_.max_reqs(), 0);
    row_hashes_.resize(table_.max_reqs());
    cache_ = std::move(cache);
  }
  int64_t m = cache_->count_hits(hashes, n);
  if (m > 0) {
    // The moves read entry_block before the update: after anything that writes it or the rows.
    const int32_t* w = words();
    if (staged_ && (w[staged::RELEASE_SIZE] > 0 || w[staged::UPDATE_SIZE] > 0 || pre_reads_rows_ ||
                    !pre_last()))
      flush(stream);
    int64_t end = staged_ ? w[staged::END] : staged::HEADER;
    if (end + staged::MOVE_WORDS * m > staged_capacity()) flush(stream);
    int64_t room = staged::words(table_.max_reqs(), 0) + staged::MOVE_WORDS * (num_blocks_ + m);
    if (room > staged_capacity()) grow(op, "staging", 4 * room);
    if (staged::HEADER + staged::MOVE_WORDS * m > staged_capacity())
      throw std::runtime_error(std::string(op) + ": grow() left the staging buffers too small");
  }
  InCall in(in_call_);
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  int64_t at = 0;
  if (m > 0) {
    staging();
    at = append_moves(op, staged::PRE_SIZE, staged::PRE_AT, m);
  }
  int32_t row = table_.register_request(req_id, m * bs);
  int32_t* entries = row_entries_.data() + row * width_;
  cache_->acquire(hashes, m, entries);
  cache_->count_query(n, m);
  cached_in_row_[row] = static_cast<int32_t>(m);
  if (n > 0) {
    row_hashes_[row].assign(hashes, hashes + n);
    ++rows_with_hashes_;
  }
  if (m > 0) {
    for (int64_t k = 0; k < m; ++k)
      move(at + staged::MOVE_WORDS * k, staged::MOVE_MATCH, row, k, entries[k]);
    int32_t* w = words();
    w[staged::PRE_SIZE] += static_cast<int32_t>(m);
    w[staged::END] = static_cast<int32_t>(at + staged::MOVE_WORDS * m);
  }
  return m * bs;
}

std::vector<int32_t> DeviceStep::cached_entries(int64_t req_id) const {
  int32_t row = table_.row_of(req_id);
  if (row < 0)
    throw UnknownRequest("cached_entries: request id " + str(req_id) + " is not a running request");
  int64_t count = table_.blocks_of(table_.seq_len_of_row(row));
  if (!cache_) return std::vector<int32_t>(count, -1);
  const int32_t* entries = row_entries_.data() + row * width_;
  return std::vector<int32_t>(entries, entries + count);
}

std::vector<int32_t> DeviceStep::indexed_entries() const {
  std::vector<int32_t> out;
  if (cache_)
    for (int64_t e = 0; e < num_blocks_; ++e)
      if (cache_->indexed(static_cast<int32_t>(e))) out.push_back(static_cast<int32_t>(e));
  return out;
}

std::string DeviceStep::check_prefix() const {
  if (!cache_) return "";
  std::vector<int32_t> holders(num_blocks_, 0);
  std::vector<int8_t> is_free(num_blocks_, 0);
  for (int32_t e : free_entries_) {
    if (e < 0 || e >= num_blocks_ || is_free[e]) return "entry " + str(e) + " is free twice";
    is_free[e] = 1;
  }
  int64_t with_hashes = 0;
  for (int64_t row = 0; row < table_.max_reqs(); ++row) with_hashes += !row_hashes_[row].empty();
  if (with_hashes != rows_with_hashes_)
    return str(with_hashes) + " rows hold hashes, the count says " + str(rows_with_hashes_);
  for (int64_t req_id : table_.req_ids()) {
    int32_t row = table_.row_of(req_id);
    int64_t count = table_.blocks_of(table_.seq_len_of_row(row)), cached = 0;
    for (int64_t k = 0; k < width_; ++k) {
      int32_t e = row_entries_[row * width_ + k];
      if (e < 0) continue;
      if (k >= count)
        return "request " + str(req_id) + " holds entry " + str(e) + " past its blocks";
      ++holders[e];
      ++cached;
    }
    if (cached != cached_in_row_[row])
      return "request " + str(req_id) + " holds " + str(cached) +
             " cached blocks, its count says " + str(cached_in_row_[row]);
  }
  std::string err = cache_->check_integrity(holders, is_free);
  if (!err.empty()) return err;
  if (cache_->num_cached() + static_cast<int64_t>(free_entries_.size()) != num_blocks_)
    return str(cache_->num_cached()) + " indexed + " + str(free_entries_.size()) +
           " free entries != " + str(num_blocks_);
  return "";
}

}  // namespace disagmoe
