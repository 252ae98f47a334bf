// bench/eval: the evaluation harness on stories260K-hf (and bert-tiny-sst2 for the classifiers).
//  1. ARC-Easy scoring throughput with context reuse (each question's context runs once, its KV
//     cache serves the four choices) against scoring every choice from scratch, in one run:
//     paired repetitions, median ratio; both must give the same accuracy.
//  2. Milliseconds per example of every task at --limit 200 (perplexity tasks: per window).
//
//   build/bench/eval [--reps N] [--arc-limit N] [--limit N] [--data-dir DIR]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/compute/gemm.hpp"
#include "core/io/model.hpp"
#include "evaluators/evaluator.hpp"
#include "evaluators/harness.hpp"
#include "evaluators/tasks.hpp"

using namespace rankscope;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  int64_t arc_limit = 500;
  int64_t limit = 200;
  std::filesystem::path data_dir = "../shared/data";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--arc-limit") && i + 1 < argc) arc_limit = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--limit") && i + 1 < argc) limit = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--data-dir") && i + 1 < argc) data_dir = argv[++i];
    else {
      fmt::print(stderr, "usage: {} [--reps N] [--arc-limit N] [--limit N] [--data-dir DIR]\n", argv[0]);
      return 2;
    }
  }
  try {
    const Model llama = load_model(data_dir / "stories260K-hf");
    fmt::print("bench/eval on {} ({} threads)\n\n", llama.dir.string(), num_threads());

    // 1. Context reuse against from scratch.
    const Task arc = load_task("arc_easy", {.data_dir = data_dir, .limit = arc_limit});
    std::vector<double> t_reuse, t_scratch, ratio;
    double acc_reuse = 0.0, acc_scratch = 0.0;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      acc_reuse = evaluate_task(llama, arc, {.reuse_context = true}).metrics[0].value;
      t_reuse.push_back(seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
      acc_scratch = evaluate_task(llama, arc, {.reuse_context = false}).metrics[0].value;
      t_scratch.push_back(seconds_since(t0));
      ratio.push_back(t_scratch.back() / t_reuse.back());
    }
    const double n = static_cast<double>(arc.docs.size());
    fmt::print("1. ARC-Easy, {} questions x 4 choices, {} paired runs\n", arc.docs.size(), reps);
    fmt::print("   context reuse   {:8.1f} questions/s  (median {:.3f} s)  acc {:.4f}\n", n / median(t_reuse), median(t_reuse), acc_reuse);
    fmt::print("   from scratch    {:8.1f} questions/s  (median {:.3f} s)  acc {:.4f}\n", n / median(t_scratch), median(t_scratch), acc_scratch);
    const auto [lo, hi] = std::minmax_element(ratio.begin(), ratio.end());
    fmt::print("   speed-up        {:.2f}x median (min {:.2f}, max {:.2f}; target >= 1.5x){}\n\n", median(ratio), *lo, *hi,
               acc_reuse == acc_scratch ? "" : "  ACCURACY DIFFERS");

    // 2. Milliseconds per example of each task.
    fmt::print("2. ms per example at --limit {} (perplexity: per window of its default protocol)\n", limit);
    fmt::print("   {:<16} {:>8} {:>10} {:>12}  {}\n", "task", "examples", "seconds", "ms/example", "model");
    const Model bert = load_model(data_dir / "bert-tiny-sst2");
    for (const auto& name : builtin_task_names()) {
      const bool classifier = name == "sst2" || name == "mrpc";
      const Model& model = classifier ? bert : llama;
      EvalRequest request;
      request.tasks = {name};
      request.load = {.data_dir = data_dir, .limit = limit};
      const Evaluator evaluator(model, request);
      const auto t0 = std::chrono::steady_clock::now();
      const auto reports = evaluator.run(model, Config{});
      const double s = seconds_since(t0);
      const auto& proto = reports[0].protocol;
      const int64_t examples = proto.contains("windows") ? proto["windows"].get<int64_t>() : proto["n_docs"].get<int64_t>();
      fmt::print("   {:<16} {:>8} {:>10.3f} {:>12.3f}  {}\n", name, examples, s, 1000.0 * s / static_cast<double>(examples),
                 classifier ? "bert-tiny-sst2" : "stories260K-hf");
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench/eval: {}\n", e.what());
    return 1;
  }
  return 0;
}
