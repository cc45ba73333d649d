#include "step.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sizes.h"

namespace disagmoe {

Step::Step(RequestTable& table, int64_t depth, int device) : table_(table), depth_(depth) {
  check_range("step", "depth", depth, 1, kMaxDepth);
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

void Step::grow(const char* op, const char* which, int64_t nbytes) {
  if (!grow_)
    throw std::runtime_error(std::string(op) + ": the " + which +
                             " buffer must grow and no grow() was set");
  grow_(which, nbytes);
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

}  // namespace disagmoe
