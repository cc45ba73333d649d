#include "step.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>

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

// ---- Step ----------------------------------------------------------------------------

Step::Step(RequestTable& table, int64_t depth, int device) : table_(table), depth_(depth) {
  if (device >= 0) {
    ctx_ = std::make_unique<cuda::DeviceContext>(device);
    for (int64_t k = 0; k < depth; ++k) done_.emplace_back(*ctx_);
  } else {
    depth_ = 1;  // torch's CPU device: the host buffer is read at once, nothing waits
  }
  int64_t n = table.max_reqs() + 1;
  for (auto* v : {&plan_rows_, &plan_old_, &plan_new_, &plan_offsets_, &look_rows_, &look_lens_,
                  &look_queries_})
    v->resize(n);
}

bool Step::Memo::hit(const BatchView& batch, int64_t at_layer, uint64_t at_version) const {
  return valid && at_layer != layer && at_version == version && batch.num_prefill == num_prefill &&
         static_cast<size_t>(batch.size) == req_ids.size() &&
         static_cast<size_t>(batch.num_prefill_lens) == prefill_lens.size() &&
         std::equal(req_ids.begin(), req_ids.end(), batch.req_ids) &&
         std::equal(prefill_lens.begin(), prefill_lens.end(), batch.prefill_lens);
}

void Step::Memo::remember(const BatchView& batch, const int32_t* lengths, int64_t at_layer,
                          uint64_t at_version) {
  valid = true;
  seq_lens.assign(lengths, lengths + batch.size);
  req_ids.assign(batch.req_ids, batch.req_ids + batch.size);
  prefill_lens.assign(batch.prefill_lens, batch.prefill_lens + batch.num_prefill_lens);
  num_prefill = batch.num_prefill;
  layer = at_layer;
  version = at_version;
}

const int32_t* Step::plan(const char* op, const BatchView& batch) {
  planned_ = committed_ = false;
  plan_ids_.assign(batch.req_ids, batch.req_ids + batch.size);
  plan_lens_.assign(batch.prefill_lens, batch.prefill_lens + batch.num_prefill_lens);
  plan_prefill_ = batch.num_prefill;
  plan_total_ = table_.plan_update(op, planned_batch(), num_free_blocks(), planned_steps());
  plan_version_ = table_.version();
  planned_ = true;
  return plan_new_.data();
}

BatchView Step::planned_batch() const {
  return {plan_ids_.data(), static_cast<int64_t>(plan_ids_.size()), plan_prefill_,
          plan_lens_.data(), static_cast<int64_t>(plan_lens_.size())};
}

void Step::check_planned(const char* op) {
  if (!planned_ || plan_version_ != table_.version())
    throw std::runtime_error(std::string(op) +
                             ": the manager changed between planning this update and "
                             "committing it (a call on it from inside this one?); nothing "
                             "was changed");
  planned_ = false;
}

bool Step::just_committed(const BatchView& batch) const {
  return committed_ && committed_version_ == table_.version() &&
         batch.size == static_cast<int64_t>(plan_ids_.size()) &&
         batch.num_prefill == plan_prefill_ &&
         batch.num_prefill_lens == static_cast<int64_t>(plan_lens_.size()) &&
         std::equal(plan_ids_.begin(), plan_ids_.end(), batch.req_ids) &&
         std::equal(plan_lens_.begin(), plan_lens_.end(), batch.prefill_lens);
}

const int32_t* Step::lengths(const char* op, const BatchView& batch) {
  table_.lookup(op, batch, {look_rows_.data(), look_lens_.data(), look_queries_.data()});
  return look_lens_.data();
}

void Step::wait_current() {
  if (on_cuda()) done_[current_].synchronize();
}

void Step::wait_all() {
  if (!on_cuda()) return;
  cuda::ContextScope scope(*ctx_);
  for (auto& done : done_) done.synchronize();
}

void Step::advance(cuda::Stream stream) {
  if (on_cuda()) {
    done_[current_].record(stream);
    last_stream_ = stream;
    last_buffer_ = current_;
  }
  current_ = (current_ + 1) % depth_;
}

void Step::follow_last(cuda::Stream stream) {
  if (last_buffer_ >= 0 && stream != last_stream_)
    cuda::check(cuda::api().stream_wait_event(stream, done_[last_buffer_].get(), 0),
                "cuStreamWaitEvent");
}

void Step::restart() {
  current_ = 0;
  planned_ = false;
}

bool Step::remembered(const BatchView& batch, int64_t layer, uint64_t version, int64_t known,
                      PackOutcome& o) {
  if (known != packs_ || !memo_.hit(batch, layer, version)) return false;
  memo_.layer = layer;
  o.hit = true;
  o.pack_id = packs_;
  o.seq_lens = memo_.seq_lens.data();
  return true;
}

// ---- HostStep (cpu) -----------------------------------------------------------------

HostStep::HostStep(BlockBooks& core, int64_t depth, int device)
    : Step(core.table(), depth, device), core_(core), pitch_(core.max_blocks_per_seq()) {
  buffers_.resize(depth_);
}

void HostStep::set_buffer(int64_t k, int32_t* table, uint8_t* head, int64_t head_bytes) {
  check_range("HostStep.set_buffer", "k", k, 0, depth_ - 1);
  buffers_[k] = {table, head, head_bytes};
}

void HostStep::set_out(uint8_t* out, int64_t nbytes) {
  out_ = out;
  out_bytes_ = nbytes;
}

void HostStep::commit(const char* op) {
  check_planned(op);
  core_.commit_first_layer(planned_batch(), planned_steps(), plan_total_, nullptr);
  committed();
}

PackOutcome HostStep::pack(const char* op, const BatchView& batch, int64_t layer,
                           cuda::Stream stream, int64_t known, const Grow& grow) {
  PackOutcome o;
  uint64_t version = table_.version();
  if (remembered(batch, layer, version, known, o)) return o;
  o.stats = just_committed(batch) ? core_.lookup_planned(batch, planned_steps())
                                  : core_.lookup_for_pack(op, batch);
  MetadataLayout l = metadata_layout(batch.size, o.stats.width, o.stats.num_tokens);
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  wait_current();  // (before a buffer is grown: its last copy is done)
  int64_t table_bytes = l.nbytes - l.block_tables;
  int64_t head = l.block_tables + (on_cuda() && table_bytes <= kCompactBytes ? table_bytes : 0);
  if (head > buffers_[current_].head_bytes) grow("host", head);
  if (l.nbytes > out_bytes_) grow("device", l.nbytes);
  Buffer& b = buffers_[current_];
  if (head > b.head_bytes || l.nbytes > out_bytes_)
    throw std::runtime_error(std::string(op) + ": grow() left a buffer too small");
  core_.write_metadata(batch, l, b.head, b.table, pitch_, current_);
  send(l, stream);
  advance(stream);
  o.pack_id = ++packs_;
  o.seq_lens = core_.packed_lengths();
  memo_.remember(batch, o.seq_lens, layer, version);
  return o;
}

void HostStep::send(const MetadataLayout& l, cuda::Stream stream) {
  const Buffer& b = buffers_[current_];
  int64_t rows = l.batch_size, width = l.width;
  if (!on_cuda()) {
    std::memcpy(out_, b.head, l.block_tables);
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(out_ + l.block_tables + 4 * i * width, b.table + i * pitch_, 4 * width);
    return;
  }
  const cuda::Api& a = cuda::api();
  follow_last(stream);
  auto device = reinterpret_cast<cuda::DevicePtr>(out_);
  if (l.nbytes - l.block_tables <= kCompactBytes) {  // the rows gathered after the rest: one copy
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(b.head + l.block_tables + 4 * i * width, b.table + i * pitch_, 4 * width);
    cuda::check(a.memcpy_htod_async(device, b.head, l.nbytes, stream), "cuMemcpyHtoDAsync");
    return;
  }
  cuda::check(a.memcpy_htod_async(device, b.head, l.block_tables, stream), "cuMemcpyHtoDAsync");
  if (rows > 0 && width > 0) {
    cuda::Copy2D c{};
    c.src_memory_type = cuda::kHostMemory;
    c.src_host = b.table;
    c.src_pitch = 4 * pitch_;
    c.dst_memory_type = cuda::kDeviceMemory;
    c.dst_device = device + l.block_tables;
    c.dst_pitch = 4 * width;
    c.width_bytes = 4 * width;
    c.height = rows;
    cuda::check(a.memcpy_2d_async(&c, stream), "cuMemcpy2DAsync");
  }
}

void HostStep::release(const char* op, const int64_t* req_ids, int64_t n) {
  core_.release_seqs(op, req_ids, n);
}

void HostStep::reset() {
  core_.reset_state();
  restart();
}

// ---- DeviceStep (gpu, hybrid) -----------------------------------------------------------

DeviceStep::DeviceStep(RequestTable& table, int64_t num_blocks, int64_t depth, int device)
    : Step(table, depth, device), stack_height_(num_blocks), num_blocks_(num_blocks) {
  buffers_.resize(depth_);
  graphs_.assign(depth_ * kFlagSets * 32, nullptr);
  release_rows_.resize(table.max_reqs() + 1);
  release_lens_.resize(table.max_reqs() + 1);
}

DeviceStep::DeviceStep(BlockBooks& core, int64_t depth, int device)
    : DeviceStep(core.table(), 0, depth, device) {
  core_ = &core;
}

int64_t DeviceStep::num_free_blocks() const {
  return core_ ? core_->num_free_blocks() : stack_height_;
}

void DeviceStep::set_buffer(int64_t k, int32_t* words, int64_t nwords) {
  check_range("DeviceStep.set_buffer", "k", k, 0, depth_ - 1);
  if (staged_ && k == current_) {
    if (buffers_[k].words[staged::UPDATE_SIZE] || buffers_[k].words[staged::RELEASE_SIZE])
      throw std::runtime_error("DeviceStep.set_buffer: buffer " + str(k) + " holds staged work");
    staged_ = false;  // acquired, nothing in it yet
  }
  buffers_[k] = {words, nwords};
}

void DeviceStep::set_free_stack(uint8_t* stack, const uint8_t* initial) {
  free_stack_ = stack;
  initial_stack_ = initial;
}

void DeviceStep::set_twin(cuda::DevicePtr twin, int64_t nwords) {
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

void DeviceStep::set_graph(int flags, int64_t grid, int64_t buffer,
                           const cuda::GraphHandle* graph) {
  check_range("DeviceStep.set_graph", "flags", flags, 1, kFlagSets - 1);
  check_range("DeviceStep.set_graph", "grid", grid, 1, int64_t{1} << 31);
  check_range("DeviceStep.set_graph", "buffer", buffer, 0, depth_ - 1);
  graphs_[graph_index(flags, grid, buffer)] = graph;
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
  InCall in(in_call_);
  check_planned(op);
  BatchView b = planned_batch();
  StepPlan p = planned_steps();
  if (b.size == 0) {  // nothing to reserve, nothing to stage
    table_.commit_update(b, p);
    return;
  }
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  if (staged_ && words()[staged::UPDATE_SIZE] > 0) launch(stream, false);  // may throw: no change
  int32_t* w = staging();
  int64_t stride = b.size + 1, ids = core_ ? plan_total_ : 0;
  int64_t at = append(op, staged::PLAN_COLUMNS * stride + ids);
  if (core_) {
    core_->commit_first_layer(b, p, plan_total_, w + at + staged::PLAN_COLUMNS * stride);
  } else {
    table_.commit_update(b, p);
    w[staged::HEIGHT] = static_cast<int32_t>(stack_height_);
    stack_height_ -= plan_total_;
  }
  copy_plan(p, {w + at, w + at + stride, w + at + 2 * stride, w + at + 3 * stride}, b.size);
  w[staged::UPDATE_SIZE] = static_cast<int32_t>(b.size);
  w[staged::PLAN_AT] = static_cast<int32_t>(at);
  w[staged::PLAN_STRIDE] = static_cast<int32_t>(stride);
  w[staged::IDS_AT] = static_cast<int32_t>(at + staged::PLAN_COLUMNS * stride);
  w[staged::END] = static_cast<int32_t>(at + staged::PLAN_COLUMNS * stride + ids);
  committed();
}

PackOutcome DeviceStep::pack(const char* op, const BatchView& batch, int64_t layer,
                             cuda::Stream stream, int64_t known, const Grow& grow) {
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
  if (l.nbytes > out_bytes_) grow("device", l.nbytes);
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
  if (core_) {  // hybrid: the host frees the blocks; a row's stale device entries are never read
    core_->release_seqs(op, req_ids, n);
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
  if (!core_ && free_stack_) {  // first: the one step that can fail
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
  if (core_)
    core_->reset_state();
  else
    table_.reset_state();
  stack_height_ = num_blocks_;
  staged_ = false;
  restart();
}

}  // namespace disagmoe
