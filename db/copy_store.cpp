#include "db/copy_store.hpp"

#include <map>
#include <unordered_map>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

nlohmann::json without_stale_after(nlohmann::json settings) {
  if (settings.is_object()) settings.erase("stale_after");
  return settings;
}

}  // namespace

std::vector<CopyReport> copy_studies(const ResultsStore& from, ResultsStore& to, const std::string& study) {
  std::vector<StudyInfo> studies;
  if (study.empty()) {
    studies = from.studies();
  } else {
    auto s = from.find_study(study);
    if (!s) fail("{}: no study '{}'", from.display(), study);
    studies.push_back(*s);
  }
  std::unordered_map<std::string, ModelInfo> models;
  for (const auto& m : from.models()) models[m.hash] = m;
  std::unordered_map<std::string, int64_t> target_model;  // hash -> id in `to`
  std::vector<CopyReport> reports;
  for (const auto& s : studies) {
    CopyReport report;
    report.study = s.name;
    report.created = !to.find_study(s.name);
    const int64_t target = to.open_study(s.name, s.settings, [&](const nlohmann::json& existing) {
      if (without_stale_after(existing) != without_stale_after(s.settings)) {
        fail("{}: study '{}' exists with other settings than in {}; copy it under another name (studies --rename)",
             to.display(), s.name, from.display());
      }
    });
    // Finished evaluations, grouped by (model, worker): one transaction per group.
    std::map<std::pair<std::string, std::string>, std::vector<NewEvaluation>> groups;
    int64_t finished = 0;
    from.for_each_evaluation(s.id, [&](const EvaluationRecord& r) {
      if (!is_finished(r.status)) {
        ++report.in_flight;
        return;
      }
      ++finished;
      groups[{r.model_hash, r.worker}].push_back({r.config, r.status, r.metrics, r.wall_s, r.error});
    });
    for (auto& [key, evaluations] : groups) {
      const auto& [model_hash, worker] = key;
      auto id = target_model.find(model_hash);
      if (id == target_model.end()) {
        const auto m = models.find(model_hash);
        if (m == models.end()) fail("{}: study '{}' names model {} that the store does not hold", from.display(), s.name, model_hash);
        id = target_model.emplace(model_hash, to.add_model(m->second)).first;
      }
      report.copied += to.add_evaluations(target, id->second, evaluations, worker);
    }
    report.present = finished - report.copied;
    if (!to.load_strategy_state(target)) {
      if (auto state = from.load_strategy_state(s.id)) to.save_strategy_state(target, *state);
    }
    reports.push_back(report);
  }
  return reports;
}

}  // namespace rankscope
