// Fills a FlatIdMap sized for 16,384 ids with id sets that all share one home
// slot under the map's former fixed hash (key * 0x9E3779B97F4A7C15 >> shift),
// checks find / insert / erase on them, and prints per set the displacement of
// linear probing (slots past the home slot, mean and max) under the map's
// buckets and under the former hash. Compiled and run by test_hostile_ids.py.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "flat_id_map.h"

namespace {

constexpr int64_t kIds = 16384;
constexpr uint64_t kFormer = 0x9E3779B97F4A7C15ull;

struct Probes {
  double mean;
  uint64_t max;
};

// Linear probing's displacement when keys land at `homes` in this order.
Probes probes(const std::vector<uint64_t>& homes, uint64_t capacity) {
  std::vector<char> taken(capacity, 0);
  uint64_t total = 0, most = 0;
  for (uint64_t home : homes) {
    uint64_t i = home, d = 0;
    while (taken[i]) i = (i + 1) & (capacity - 1), ++d;
    taken[i] = 1;
    total += d;
    most = d > most ? d : most;
  }
  return {static_cast<double>(total) / homes.size(), most};
}

bool check(bool ok, const std::string& what) {
  if (!ok) std::printf("FAILED %s\n", what.c_str());
  return ok;
}

bool run(const char* name, const std::vector<int64_t>& ids) {
  disagmoe::FlatIdMap map(kIds);
  uint64_t capacity = map.bucket_count();
  int shift = 64;
  for (uint64_t c = capacity; c > 1; c >>= 1) --shift;
  std::vector<uint64_t> homes, former;
  for (size_t i = 0; i < ids.size(); ++i) {
    map.insert(ids[i], static_cast<int32_t>(i));
    homes.push_back(map.bucket(ids[i]));
    former.push_back((static_cast<uint64_t>(ids[i]) * kFormer) >> shift);
  }
  bool ok = check(map.size() == kIds, std::string(name) + ": size");
  for (size_t i = 0; i < ids.size(); ++i)
    ok &= check(map.find(ids[i]) == static_cast<int32_t>(i), name);
  for (size_t i = 0; i < ids.size(); i += 2) map.erase(ids[i]);
  for (size_t i = 0; i < ids.size(); ++i)
    ok &= check(map.find(ids[i]) == (i % 2 ? static_cast<int32_t>(i) : -1),
                std::string(name) + ": erase");
  for (size_t i = 0; i < ids.size(); i += 2) map.insert(ids[i], static_cast<int32_t>(i));
  for (size_t i = 0; i < ids.size(); ++i)
    ok &= check(map.find(ids[i]) == static_cast<int32_t>(i), name);
  disagmoe::FlatIdMap other(kIds);
  bool moved = false;
  for (int64_t id : ids) moved |= other.bucket(id) != map.bucket(id);
  ok &= check(moved, std::string(name) + ": two maps place every id alike");
  Probes now = probes(homes, capacity), then = probes(former, capacity);
  std::printf("%s %.3f %llu %.3f %llu\n", name, now.mean, static_cast<unsigned long long>(now.max),
              then.mean, static_cast<unsigned long long>(then.max));
  return ok;
}

}  // namespace

int main() {
  uint64_t inverse = kFormer;  // Newton's iteration: kFormer * inverse == 1 mod 2**64
  for (int i = 0; i < 6; ++i) inverse *= 2 - kFormer * inverse;
  std::vector<int64_t> by_inverse, by_inverse_high, negative;
  for (int64_t i = 0; i < kIds; ++i) {
    by_inverse.push_back(static_cast<int64_t>(static_cast<uint64_t>(i) * inverse));
    // the former hash keeps only its top bits: anything below them is free
    by_inverse_high.push_back(static_cast<int64_t>((static_cast<uint64_t>(i) * 977 + 5) * inverse));
    negative.push_back(static_cast<int64_t>((0 - static_cast<uint64_t>(i) - 1) * inverse));
  }
  bool ok = run("inverse", by_inverse) & run("inverse-spread", by_inverse_high) &
            run("inverse-negative", negative);
  return ok ? 0 : 1;
}
