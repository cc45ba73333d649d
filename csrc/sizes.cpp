#include "sizes.h"

namespace disagmoe {

void check_host_bytes(const char* op, const std::string& what, int64_t bytes) {
  if (bytes > kMaxHostBytes)
    throw std::invalid_argument(std::string(op) + ": " + what + " need " + str(bytes) +
                                " bytes, past the " + str(kMaxHostBytes) +
                                " bytes of memory (64 GiB) one manager's books may take");
}

}  // namespace disagmoe
