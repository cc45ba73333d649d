#include "sizes.h"

#include <unistd.h>

namespace disagmoe {

int64_t host_memory_bytes() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGE_SIZE);
  int64_t bytes;
  if (pages <= 0 || page_size <= 0 || __builtin_mul_overflow(pages, page_size, &bytes))
    return INT64_MAX;
  return bytes;
}

void check_host_bytes(const char* op, const std::string& what, int64_t bytes) {
  int64_t memory = host_memory_bytes();
  if (bytes > memory)
    throw std::invalid_argument(std::string(op) + ": " + what + " need " + str(bytes) +
                                " bytes, more than this machine's " + str(memory) +
                                " bytes of memory");
}

}  // namespace disagmoe
