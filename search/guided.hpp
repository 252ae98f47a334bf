// The guided strategy (make_strategy("guided", ...)): see search/guided.cpp and docs/search.md.
#pragma once

#include <memory>
#include <vector>

#include "search/strategy.hpp"

namespace rankscope {

// Throws Error without objectives, for batch/initial < 1 or priors whose shape is not the space's.
std::unique_ptr<Strategy> make_guided_strategy(std::vector<int64_t> radices, const StrategyOptions& options);

}  // namespace rankscope
