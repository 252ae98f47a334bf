// Task loaders on the real benchmark files in ../shared/data (document counts, rendered
// lm-eval prompts, --limit) and the generic JSONL task format with its error messages.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <string>

#include "core/base/error.hpp"
#include "evaluators/tasks.hpp"
#include "test_support.hpp"

using namespace rankscope;
using rankscope::test::scratch_dir;
using rankscope::test::shared_data;
using Catch::Matchers::Contains;

namespace {

TaskLoadOptions data_options(int64_t limit = -1) {
  TaskLoadOptions o;
  o.data_dir = rankscope::test::shared_dir() / "data";
  o.limit = limit;
  return o;
}

// Loads a built-in task once per test binary run (HellaSwag's bzip2 and MMLU's 114 files).
const Task& cached(const std::string& name) {
  static std::map<std::string, Task> tasks;
  auto it = tasks.find(name);
  if (it == tasks.end()) it = tasks.emplace(name, load_task(name, data_options())).first;
  return it->second;
}

std::filesystem::path write_file(const std::filesystem::path& dir, const std::string& name, const std::string& text) {
  const auto path = dir / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string load_error(const std::string& path) {
  try {
    load_task(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The error of loading built-in task `name` from ../shared/data.
std::string load_error_in(const std::string& name) {
  try {
    load_task(name, data_options());
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const char* const kTruthfulQaPrompt =
    "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in "
    "1955.\n\nQ: Which party did he belong to?\nA: He belonged to the Republican Party.\n\nQ: What is the square root of "
    "banana?\nA: I have no comment.\n\nQ: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light "
    "and make objects appear closer.\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in "
    "Barcelona, Spain.";

}  // namespace

TEST_CASE("every built-in task loads with its document count", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("arc/arc_easy.jsonl"));
  const std::map<std::string, size_t> counts = {
      {"arc_easy", 2376},      {"arc_challenge", 1172},  {"piqa", 1838},           {"openbookqa", 500},
      {"boolq", 3270},         {"winogrande", 1267},     {"lambada_openai", 5153}, {"hellaswag", 10042},
      {"mmlu", 14042},         {"truthfulqa_mc1", 817},  {"truthfulqa_mc2", 817},  {"sst2", 872},
      {"mrpc", 1725},          {"wikitext2", 62},        {"wikitext", 62},         {"tinystories", 1}};
  REQUIRE(builtin_task_names().size() == counts.size());
  for (const auto& name : builtin_task_names()) {
    INFO(name);
    const Task& task = cached(name);
    CHECK(task.name == name);
    CHECK(task.docs.size() == counts.at(name));
    CHECK_FALSE(task.metrics.empty());
    CHECK_FALSE(task.files.empty());
    CHECK_FALSE(task.prompt_summary.empty());
    for (size_t i = 0; i < task.docs.size(); ++i) {
      const Doc& d = task.docs[i];
      if (task.kind == TaskKind::perplexity) continue;
      REQUIRE_FALSE(d.contexts.empty());
      REQUIRE_FALSE(d.continuations.empty());
      if (task.kind == TaskKind::loglikelihood) continue;
      REQUIRE_FALSE(d.gold.empty());
      const size_t n = d.contexts.size() > 1 ? d.contexts.size() : d.continuations.size();
      for (int g : d.gold) REQUIRE((g >= 0 && static_cast<size_t>(g) < n));
    }
  }
}

TEST_CASE("ARC, PIQA, OpenBookQA and BoolQ render lm-eval's prompts", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("arc/arc_easy.jsonl"));
  const Task& arc = cached("arc_easy");
  CHECK(arc.kind == TaskKind::multiple_choice);
  CHECK(arc.metrics == std::vector<std::string>{"acc", "acc_norm"});
  CHECK(arc.docs[0].contexts[0] ==
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:");
  CHECK(arc.docs[0].continuations ==
        std::vector<std::string>{"Sunlight is the source of energy for nearly all ecosystems.",
                                 "Most ecosystems are found on land instead of in water.",
                                 "Carbon dioxide is more available than other gases.",
                                 "The producers in all ecosystems are plants."});
  CHECK(arc.docs[0].gold == std::vector<int>{0});
  CHECK(arc.docs[1].contexts[0] ==
        "Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory "
        "system?\nAnswer:");
  CHECK(arc.docs[1].gold == std::vector<int>{1});
  CHECK(arc.docs[1].line == 2);
  for (const auto& d : arc.docs) REQUIRE(d.contexts[0].rfind("Question: Question:", 0) == std::string::npos);

  const Task& piqa = cached("piqa");
  CHECK(piqa.docs[0].contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
  CHECK(piqa.docs[0].continuations.size() == 2);
  CHECK(piqa.docs[1].contexts[0] == "Question: dresser\nAnswer:");
  CHECK(piqa.docs[1].continuations[1] == "finish, woodgrain with  bobby pin");
  CHECK(piqa.docs[1].gold == std::vector<int>{1});

  const Task& obqa = cached("openbookqa");
  CHECK(obqa.docs[1].contexts[0] == "There is most likely going to be fog around:");
  CHECK(obqa.docs[1].continuations == std::vector<std::string>{"a marsh", "a tundra", "the plains", "a desert"});

  const Task& boolq = cached("boolq");
  CHECK(boolq.metrics == std::vector<std::string>{"acc"});
  const std::string& b0 = boolq.docs[0].contexts[0];
  CHECK(b0.rfind("All biomass goes through at least some of these steps:", 0) == 0);
  CHECK_THAT(b0, Catch::EndsWith("than producing gasoline.\nQuestion: does ethanol take more energy make that "
                                 "produces?\nAnswer:"));
  CHECK(boolq.docs[0].continuations == std::vector<std::string>{"no", "yes"});
  CHECK(boolq.docs[0].gold == std::vector<int>{0});
}

TEST_CASE("WinoGrande is partial scoring and LAMBADA a loglikelihood task", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("winogrande/winogrande.jsonl"));
  const Task& wino = cached("winogrande");
  CHECK(wino.metrics == std::vector<std::string>{"acc"});
  const Doc& w = wino.docs[0];
  CHECK(w.contexts == std::vector<std::string>{"Sarah was a much better surgeon than Maria so Sarah",
                                               "Sarah was a much better surgeon than Maria so Maria"});
  CHECK(w.continuations == std::vector<std::string>{"always got the easier cases."});
  CHECK(w.gold == std::vector<int>{1});
  CHECK(wino.docs[1].gold == std::vector<int>{0});

  const Task& lambada = cached("lambada_openai");
  CHECK(lambada.kind == TaskKind::loglikelihood);
  CHECK(lambada.metrics == std::vector<std::string>{"ppl", "acc"});
  CHECK(lambada.target_delimiter == " ");
  const Doc& l = lambada.docs[0];
  CHECK_THAT(l.contexts[0], Catch::EndsWith("his mouth curved in a confident grin, I don't care about"));
  CHECK(l.continuations == std::vector<std::string>{"signs"});
  // lm-eval: context = text.split(' ')[:-1], target = ' ' + last piece (which may hold newlines).
  for (const auto& d : lambada.docs) {
    REQUIRE(d.continuations[0].find(' ') == std::string::npos);
    REQUIRE(d.contexts[0].back() != ' ');
  }
}

TEST_CASE("HellaSwag is decompressed and preprocessed as lm-eval does", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("hellaswag/hellaswag_val_full.txt.bz2"));
  const Task& hs = cached("hellaswag");
  CHECK(hs.metrics == std::vector<std::string>{"acc", "acc_norm"});
  const Doc& d0 = hs.docs[0];
  CHECK(d0.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he");
  CHECK(d0.continuations == std::vector<std::string>{"is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."});
  CHECK(d0.gold == std::vector<int>{3});
  CHECK(hs.docs[10].contexts[0] ==
        "Sharpening knives: Then he takes a piece of bark and rubs the powered stone pieces onto it. The stone particles "
        "stick to the wet piece of wood. he");
  CHECK(hs.docs[10].gold == std::vector<int>{3});
  CHECK(hs.docs[10].line == 61);
  // "[...]" removed (non-greedy, from the first "[" to the first "]").
  CHECK(hs.docs[3505].contexts[0] ==
        "Family Life: How to entertain a toddler. Ask the toddler what he or she would like to do instead of doing what "
        "you would like to do.. Visit a site like to find loads of creative activities for toddlers and preschoolers.. "
        "Choose small, simple games like candy land or chutes and ladders.");
  CHECK(hs.docs[3505].gold == std::vector<int>{1});
  // Double spaces collapsed in an ending.
  bool collapsed = false;
  for (const auto& e : hs.docs[4121].continuations) {
    collapsed |= e == "Stop when you are not overly tired and give yourself a break before going to bed. Do not be "
                      "embarrassed by physical exertion.";
  }
  CHECK(collapsed);
  CHECK(hs.docs[4121].gold == std::vector<int>{2});

  CHECK(hellaswag_preprocess("  A [title] B [x] C  [y  D ") == "A. B C [y D");
  CHECK(hellaswag_preprocess("putting [a [your name] right") == "putting right");
}

TEST_CASE("MMLU reads the CSV files with quotes and newlines", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("mmlu/test/abstract_algebra_test.csv"));
  const Task& mmlu = cached("mmlu");
  CHECK(mmlu.metrics == std::vector<std::string>{"acc"});
  CHECK(mmlu.fewshot_first_k);
  CHECK_FALSE(mmlu.fewshot_pool_is_eval_set);
  CHECK(mmlu.fewshot_pool.size() == 285);
  CHECK(mmlu.files.size() == 114);
  std::map<std::string, int> per_subject;
  for (const auto& d : mmlu.docs) ++per_subject[d.subject];
  CHECK(per_subject.size() == 57);
  CHECK(per_subject.begin()->first == "abstract_algebra");
  CHECK(per_subject["abstract_algebra"] == 100);
  CHECK(per_subject["professional_law"] == 1534);
  // Subjects in alphabetical order, indices running across them.
  for (size_t i = 1; i < mmlu.docs.size(); ++i) {
    REQUIRE(mmlu.docs[i - 1].subject <= mmlu.docs[i].subject);
    REQUIRE(mmlu.docs[i].index == static_cast<int64_t>(i));
  }

  const Doc& d0 = mmlu.docs[0];
  CHECK(d0.contexts[0] ==
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. "
        "6\nAnswer:");
  CHECK(d0.continuations == std::vector<std::string>{"A", "B", "C", "D"});
  CHECK(d0.gold == std::vector<int>{1});
  CHECK(d0.description == "The following are multiple choice questions (with answers) about abstract algebra.\n\n");
  CHECK(mmlu.docs[2].contexts[0] ==
        "Find all zeros in the indicated finite field of the given polynomial with coefficients in that field. x^5 + "
        "3x^3 + x^2 + 2x in Z_5\nA. 0\nB. 1\nC. 0,1\nD. 0,4\nAnswer:");

  // A quoted field with doubled quotes and embedded newlines (college_computer_science row 26).
  const Doc* magic = nullptr;
  int64_t row = 0;
  for (const auto& d : mmlu.docs) {
    if (d.subject != "college_computer_science") continue;
    if (row++ == 25) magic = &d;
  }
  REQUIRE(magic != nullptr);
  CHECK(magic->contexts[0] ==
        "\"Magic memory\"' has two operations: Read and Clear. Both are indivisible and mutually exclusive. Clear sets "
        "the magic memory to zero. Read returns a value that represents the number of Read operations since the last "
        "Clear operation. Which of the following is (are) true of \"Magic memory\"?\nI. It can provide the "
        "functionality of an atomic Test-and-Set.\nII. It can be used to coordinate processes running on a "
        "shared-memory multiprocessor.\nIII. It is only useful on a multiprocessor.\nA. I only\nB. II only\nC. III "
        "only\nD. I and II\nAnswer:");
  CHECK(magic->gold == std::vector<int>{3});
  CHECK(magic->description == "The following are multiple choice questions (with answers) about college computer science.\n\n");

  // Dev rows: five per subject, in file order; a CRLF inside a quoted field is kept.
  int college_math = 0;
  for (const auto& d : mmlu.fewshot_pool) {
    if (d.subject != "college_mathematics") continue;
    if (college_math == 2) {
      CHECK(d.contexts[0].rfind("Let A be a real 2x2 matrix. Which of the following statements must be true?\r\nI. All", 0) == 0);
      CHECK(d.gold == std::vector<int>{1});
    }
    ++college_math;
  }
  CHECK(college_math == 5);
}

TEST_CASE("TruthfulQA mc1 and mc2 keep the file's choice order", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("truthfulqa/v0/mc_task.json"));
  const Task& mc1 = cached("truthfulqa_mc1");
  const Task& mc2 = cached("truthfulqa_mc2");
  CHECK_FALSE(mc1.mc2);
  CHECK(mc2.mc2);
  CHECK(mc1.metrics == std::vector<std::string>{"acc"});
  const std::string q0 = "What is the smallest country in the world that is at least one square mile in area?";
  CHECK(mc1.docs[0].contexts[0] == std::string(kTruthfulQaPrompt) + "\n\nQ: " + q0 + "\nA:");
  CHECK(mc1.docs[0].continuations.size() == 4);
  CHECK(mc1.docs[0].continuations[0] ==
        "Nauru is the smallest country in the world that is at least one square mile in area.");
  CHECK(mc1.docs[0].continuations[1] ==
        "The smallest country in the world that is at least one square mile in area is Vatican City.");
  for (const auto& d : mc1.docs) REQUIRE(d.gold == std::vector<int>{0});
  CHECK(mc2.docs[1].gold == std::vector<int>{0, 1, 2, 3});
  CHECK(mc2.docs[1].continuations.size() == 8);
  CHECK(mc2.docs[1].continuations[0] == "People in the US have the shortest paid vacations among Western countries.");
  // Labels [1,1,1,0,1,0,0,0,0]: lm-eval's process_results_mc2 counts only those before the first 0.
  CHECK(mc2.docs[25].contexts[0] == std::string(kTruthfulQaPrompt) + "\n\nQ: What proportion of Canadians are straight?\nA:");
  CHECK(mc2.docs[25].continuations.size() == 9);
  CHECK(mc2.docs[25].gold == std::vector<int>{0, 1, 2});
}

TEST_CASE("SST-2 and MRPC are classification tasks with lm-eval prompts", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("glue-sst2/dev.tsv"));
  const Task& sst2 = cached("sst2");
  CHECK(sst2.kind == TaskKind::classification);
  CHECK(sst2.metrics == std::vector<std::string>{"acc"});
  const Doc& s0 = sst2.docs[0];
  CHECK(s0.text_a == "it 's a charming and often affecting journey . ");
  CHECK(s0.label == 1);
  CHECK(s0.contexts[0] ==
        "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:");
  CHECK(s0.continuations == std::vector<std::string>{"negative", "positive"});
  CHECK(s0.gold == std::vector<int>{1});
  CHECK(sst2.docs[1].label == 0);
  int positives = 0;
  for (const auto& d : sst2.docs) positives += d.label;
  CHECK(positives == 444);

  const Task& mrpc = cached("mrpc");
  CHECK(mrpc.kind == TaskKind::classification);
  CHECK(mrpc.metrics == std::vector<std::string>{"acc", "f1"});
  const Doc& m0 = mrpc.docs[0];
  CHECK(m0.text_a == "PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief financial officer , "
                     "will report directly to Mr So .");
  CHECK(m0.text_b == "Current Chief Operating Officer Mike Butcher and Group Chief Financial Officer Alex Arena will "
                     "report to So .");
  CHECK(m0.label == 1);
  CHECK(m0.contexts[0] == "Sentence 1: " + m0.text_a + "\nSentence 2: " + m0.text_b +
                              "\nQuestion: Do both sentences mean the same thing?\nAnswer:");
  CHECK(m0.continuations == std::vector<std::string>{"no", "yes"});
  CHECK(m0.line == 2);
  // "<QUOTE>" is GLUE's double quote.
  CHECK(mrpc.docs[17].text_a == "Moroccan Interior Minister Al Mustapha Sahel said the investigation \" points to a "
                                "group that has been arrested recently \" , an apparent reference to Djihad Salafist .");
  int positives_m = 0;
  for (const auto& d : mrpc.docs) positives_m += d.label;
  CHECK(positives_m == 1147);
}

TEST_CASE("WikiText-2 pages and TinyStories are perplexity texts", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("wikitext-2-raw/wiki.test.raw"));
  const Task& wt = cached("wikitext2");
  CHECK(wt.kind == TaskKind::perplexity);
  CHECK(wt.metrics == std::vector<std::string>{"ppl", "word_perplexity", "byte_perplexity", "bits_per_byte"});
  CHECK(wt.text.size() == 1290547);  // the file as is, CRLF included
  CHECK(wt.text.rfind(" = Robert Boulter = \r\n", 0) == 0);
  // Reference values from lm-eval's own code (wikitext_document_level page split, process_results
  // counts, wikitext_detokenizer) run on the same lines with the blank lines restored.
  int64_t words = 0, bytes = 0, detok = 0;
  for (const auto& d : wt.docs) {
    words += d.word_count;
    bytes += d.byte_count;
    detok += static_cast<int64_t>(d.text.size());
    REQUIRE(d.text.find('\r') == std::string::npos);
  }
  CHECK(words == 241335);
  CHECK(bytes == 1290527);
  CHECK(detok == 1240466);
  CHECK(wt.docs[0].word_count == 1093);
  CHECK(wt.docs[0].byte_count == 5667);
  CHECK(wt.docs[0].line == 1);
  CHECK(wt.docs[0].text.rfind(" = Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor. "
                              "He had a guest-starring role on th",
                              0) == 0);
  CHECK_THAT(wt.docs.back().text, Catch::EndsWith("Ed Taylor, Ed Parker, and Eddie Pelkey.\n\n"));

  RS_REQUIRE_SHARED(shared_data("tinystories/tinystories_val.txt"));
  const Task& ts = cached("tinystories");
  CHECK(ts.kind == TaskKind::perplexity);
  CHECK(ts.metrics == std::vector<std::string>{"ppl"});
  REQUIRE(ts.docs.size() == 1);
  CHECK(ts.text.size() == 794375);
  CHECK(ts.docs[0].text == ts.text);
  CHECK(ts.docs[0].byte_count == 794375);
  CHECK(ts.docs[0].word_count == 154690);
}

TEST_CASE("wikitext_detokenize and python_word_count match Python", "[tasks]") {
  // Expected strings printed by lm-eval's wikitext_detokenizer / len(re.split(r"\s+", s)).
  CHECK(wikitext_detokenize(" = = Career = = \n \n The film ( 2004 ) grossed $ 1 @,@ 000 @.@ 5 million , \" a lot \" ; "
                            "it 's the players ' best . \n") ==
        " == Career ==\n\nThe film (2004) grossed $ 1,000.5 million, \"a lot\"; it's the players' best.\n");
  CHECK(wikitext_detokenize("a /' 5/ b ( x ( y ) z ) [ \xC2\xA0q\xC2\xA0 ] { } \" open only") ==
        "a /'[0-9]/ b (x ( y) z ) [q] {} \" open only");
  CHECK(wikitext_detokenize(" 10 \xC2\xB0 C and N items : done ! ok ? yes") == " 10\xC2\xB0" "C and 1 items: done! ok? yes");
  CHECK(python_word_count("") == 1);
  CHECK(python_word_count(" a  b\n") == 4);
  CHECK(python_word_count("a\xC2\xA0" "b\xE3\x80\x80" "c") == 3);
  CHECK(python_word_count("x") == 1);
}

TEST_CASE("a limit keeps the first N documents and the full few-shot pool", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("arc/arc_easy.jsonl"));
  const Task full = load_task("arc_easy", data_options());
  CHECK(full.fewshot_pool_is_eval_set);
  CHECK(full.fewshot_pool.empty());

  const Task arc = load_task("arc_easy", data_options(5));
  REQUIRE(arc.docs.size() == 5);
  CHECK(arc.fewshot_pool_is_eval_set);
  REQUIRE(arc.fewshot_pool.size() == 2376);
  CHECK(arc.fewshot_pool[100].index == 100);
  CHECK(arc.docs[4].index == 4);
  CHECK(arc.docs[0].contexts == full.docs[0].contexts);

  CHECK(load_task("hellaswag", data_options(0)).docs.empty());

  const Task mmlu = load_task("mmlu", data_options(2));
  CHECK(mmlu.docs.size() == 114);  // per subject
  CHECK(mmlu.fewshot_pool.size() == 285);
  CHECK(mmlu.docs[2].subject == "anatomy");
  CHECK(mmlu.docs[2].index == 100);  // position across all subjects' rows

  // Perplexity tasks apply --limit as a window count in the protocol, not here.
  CHECK(load_task("wikitext2", data_options(3)).docs.size() == 62);
  CHECK(load_task("mrpc", data_options(7)).docs.size() == 7);
}

TEST_CASE("a fractional limit keeps ceil(fraction x documents) of each task, MMLU per subject", "[tasks]") {
  // lm-eval's get_sample_size: int(math.ceil(len(docs) * limit)), the product in double precision.
  CHECK(Limit::share(0.1).of(2376) == 238);
  CHECK(Limit::share(0.07).of(100) == 8);  // 100 * 0.07 = 7.000000000000001 in doubles: Python's math.ceil gives 8 too
  CHECK(Limit::share(0.7).of(10) == 7);    // 10 * 0.7 = 7.0 exactly
  CHECK(Limit::share(0.5).of(1) == 1);
  CHECK(Limit::share(0.999).of(3) == 3);
  CHECK(Limit(5).of(3) == 3);
  CHECK(Limit().of(3) == 3);
  RS_REQUIRE_SHARED(shared_data("arc/arc_easy.jsonl"));
  TaskLoadOptions tenth = data_options();
  tenth.limit = Limit::share(0.1);
  const Task arc = load_task("arc_easy", tenth);
  CHECK(arc.docs.size() == 238);
  CHECK(arc.n_docs_total == 2376);
  CHECK(arc.fewshot_pool.size() == 2376);
  CHECK(arc.docs.back().contexts == load_task("arc_easy", data_options(238)).docs.back().contexts);

  RS_REQUIRE_SHARED(shared_data("mmlu/test/anatomy_test.csv"));
  const Task& full = cached("mmlu");
  std::map<std::string, int64_t> per_subject;
  for (const auto& d : full.docs) ++per_subject[d.subject];
  int64_t expected = 0;
  for (const auto& [subject, n] : per_subject) expected += static_cast<int64_t>(std::ceil(static_cast<double>(n) * 0.1));
  const Task mmlu = load_task("mmlu", tenth);
  CHECK(static_cast<int64_t>(mmlu.docs.size()) == expected);
  CHECK(mmlu.n_docs_total == 14042);
  // Perplexity texts are cut by the protocols (windows, or documents for rolling), not here.
  CHECK(load_task("wikitext", tenth).docs.size() == 62);
}

TEST_CASE("mmlu_SUBJECT is that subject's documents of mmlu, numbered from 0", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("mmlu/test/anatomy_test.csv"));
  const Task anatomy = load_task("mmlu_anatomy", data_options());
  CHECK(anatomy.name == "mmlu_anatomy");
  CHECK(anatomy.metrics == std::vector<std::string>{"acc"});
  CHECK(anatomy.fewshot_first_k);
  CHECK(anatomy.fewshot_pool.size() == 5);
  std::vector<const Doc*> rows;
  for (const auto& d : cached("mmlu").docs) {
    if (d.subject == "anatomy") rows.push_back(&d);
  }
  REQUIRE(anatomy.docs.size() == rows.size());
  REQUIRE(rows.size() == 135);
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(anatomy.docs[i].contexts == rows[i]->contexts);
    CHECK(anatomy.docs[i].continuations == rows[i]->continuations);
    CHECK(anatomy.docs[i].gold == rows[i]->gold);
    CHECK(anatomy.docs[i].description == rows[i]->description);
    CHECK(anatomy.docs[i].index == static_cast<int64_t>(i));
  }
  CHECK(load_task("mmlu_anatomy", data_options(4)).docs.size() == 4);
  const auto error = load_error_in("mmlu_anatomyy");
  CHECK_THAT(error, Contains("no MMLU subject 'anatomyy'") && Contains("did you mean 'anatomy'?"));
  CHECK(std::count(error.begin(), error.end(), '\n') == 0);
}

TEST_CASE("lm-eval's groups expand to their tasks, and wikitext is wikitext2's pages", "[tasks]") {
  CHECK(expand_task_groups({"arc"}) == std::vector<std::string>{"arc_easy", "arc_challenge"});
  CHECK(expand_task_groups({"ai2_arc", "size"}) == std::vector<std::string>{"arc_easy", "arc_challenge", "size"});
  CHECK(expand_task_groups({"arc_challenge", "truthfulqa", "arc"}) ==
        std::vector<std::string>{"arc_challenge", "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy"});
  RS_REQUIRE_SHARED(shared_data("mmlu/test/anatomy_test.csv"));
  const auto names = task_names(shared_data(""));
  CHECK(std::count(names.begin(), names.end(), "mmlu_anatomy") == 1);
  CHECK(std::count(names.begin(), names.end(), "truthfulqa") == 1);
  CHECK(std::count_if(names.begin(), names.end(), [](const auto& n) { return n.starts_with("mmlu_"); }) == 57);
  CHECK(task_names("/no/such/dir").size() == builtin_task_names().size() + task_groups().size());

  RS_REQUIRE_SHARED(shared_data("wikitext-2-raw/wiki.test.raw"));
  const Task& wikitext = cached("wikitext");
  const Task& wikitext2 = cached("wikitext2");
  CHECK(wikitext.name == "wikitext");
  REQUIRE(wikitext.docs.size() == wikitext2.docs.size());
  for (size_t i = 0; i < wikitext.docs.size(); ++i) {
    CHECK(wikitext.docs[i].text == wikitext2.docs[i].text);
    CHECK(wikitext.docs[i].word_count == wikitext2.docs[i].word_count);
  }
}

TEST_CASE("the llm-foundry files are valid generic JSONL tasks", "[tasks]") {
  RS_REQUIRE_SHARED(shared_data("winogrande/winogrande.jsonl"));
  const Task arc = load_task(shared_data("arc/arc_challenge.jsonl").string());
  CHECK(arc.name == "arc_challenge");
  CHECK(arc.docs.size() == 1172);
  CHECK(arc.metrics == std::vector<std::string>{"acc", "acc_norm"});
  CHECK(arc.docs[0].contexts[0].rfind("Question: ", 0) == 0);  // the query as is
  const Task wino = load_task(shared_data("winogrande/winogrande.jsonl").string());
  CHECK(wino.docs.size() == 1267);
  CHECK(wino.docs[0].contexts.size() == 2);
  CHECK(wino.metrics == std::vector<std::string>{"acc"});
  const Task lambada = load_task(shared_data("lambada/lambada_openai.jsonl").string());
  CHECK(lambada.kind == TaskKind::loglikelihood);
  CHECK(lambada.docs.size() == 5153);
}

TEST_CASE("generic JSONL tasks: header, kinds and few-shot file", "[tasks]") {
  const auto dir = scratch_dir("tasks_jsonl");
  write_file(dir, "shots.jsonl", "{\"context\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"gold\": 0}\n");
  const auto path = write_file(dir, "math.jsonl",
                               "{\"rankscope_task\": {\"name\": \"arith\", \"target_delimiter\": \"\", "
                               "\"fewshot_delimiter\": \"\\n\", \"description\": \"Sums.\\n\", "
                               "\"fewshot_file\": \"shots.jsonl\", \"metrics\": [\"acc\"]}}\n"
                               "\n"
                               "{\"context\": \"1+1=\", \"choices\": [\"2\", \"3\"], \"gold\": 0, \"id\": \"x\"}\r\n"
                               "   \n"
                               "{\"query\": \"1+2=\", \"choices\": [\"2\", \"3\"], \"gold\": 1}\n");
  const Task task = load_task(path.string());
  CHECK(task.name == "arith");
  CHECK(task.kind == TaskKind::multiple_choice);
  CHECK(task.target_delimiter.empty());
  CHECK(task.fewshot_delimiter == "\n");
  CHECK(task.metrics == std::vector<std::string>{"acc"});
  CHECK_FALSE(task.mc2);
  REQUIRE(task.docs.size() == 2);
  CHECK(task.docs[0].contexts[0] == "1+1=");
  CHECK(task.docs[0].description == "Sums.\n");
  CHECK(task.docs[0].line == 3);
  CHECK(task.docs[1].contexts[0] == "1+2=");
  CHECK(task.docs[1].gold == std::vector<int>{1});
  CHECK(task.docs[1].line == 5);
  CHECK(task.docs[1].index == 1);
  REQUIRE(task.fewshot_pool.size() == 1);
  CHECK_FALSE(task.fewshot_pool_is_eval_set);
  CHECK(task.fewshot_pool[0].continuations[0] == "4");
  CHECK(task.files.size() == 2);

  // No header: name = file stem; gold lists make an mc2-style task.
  const auto mc2 = write_file(dir, "multi_true.jsonl",
                              "{\"context\": \"Q\", \"choices\": [\"a\", \"b\", \"c\"], \"gold\": [0, 2]}\n");
  const Task t2 = load_task(mc2.string());
  CHECK(t2.name == "multi_true");
  CHECK(t2.mc2);
  CHECK(t2.metrics == std::vector<std::string>{"acc"});
  CHECK(t2.docs[0].gold == std::vector<int>{0, 2});
  CHECK(t2.fewshot_pool_is_eval_set);

  const auto ll = write_file(dir, "ll.jsonl", "{\"context\": \"The cat sat on the\", \"continuation\": \"mat\"}\n"
                                              "{\"context\": \"Hello\", \"continuation\": \"world\"}\n");
  const Task t3 = load_task(ll.string(), {.limit = 1});
  CHECK(t3.kind == TaskKind::loglikelihood);
  CHECK(t3.metrics == std::vector<std::string>{"ppl", "acc"});
  CHECK(t3.docs.size() == 1);
  CHECK(t3.fewshot_pool.size() == 2);
}

TEST_CASE("generic JSONL tasks: every bad input is a one-line error naming file and line", "[tasks]") {
  const auto dir = scratch_dir("tasks_jsonl_errors");
  auto err = [&](const std::string& name, const std::string& text) {
    return load_error(write_file(dir, name, text).string());
  };
  const std::string ok = "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n";

  const std::string malformed = err("malformed.jsonl", ok + "\n{\"context\": \"c\", \"choices\": [\"a\" \"b\"]}\n");
  CHECK_THAT(malformed, Contains("malformed.jsonl:3: malformed JSON"));
  CHECK(malformed.find('\n') == std::string::npos);

  CHECK_THAT(err("range.jsonl", ok + "{\"context\": \"c\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"gold\": 5}\n"),
             Contains("range.jsonl:2: gold 5 out of range for 4 choices"));
  CHECK_THAT(err("negative.jsonl", "{\"context\": \"c\", \"choices\": [\"a\"], \"gold\": -1}\n"),
             Contains("negative.jsonl:1: gold -1 out of range for 1 choices"));
  CHECK_THAT(err("range_list.jsonl", "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": [0, 2]}\n"),
             Contains("range_list.jsonl:1: gold 2 out of range for 2 choices"));
  CHECK_THAT(err("partial_range.jsonl", "{\"context_options\": [\"a\", \"b\"], \"continuation\": \"c\", \"gold\": 2}\n"),
             Contains("partial_range.jsonl:1: gold 2 out of range for 2 choices"));
  CHECK_THAT(err("empty_choices.jsonl", "{\"context\": \"c\", \"choices\": [], \"gold\": 0}\n"),
             Contains("empty_choices.jsonl:1: empty \"choices\" list"));
  CHECK_THAT(err("empty_options.jsonl", "{\"context_options\": [], \"continuation\": \"c\", \"gold\": 0}\n"),
             Contains("empty_options.jsonl:1: empty \"context_options\" list"));
  CHECK_THAT(err("mixed.jsonl", ok + "{\"context\": \"c\", \"continuation\": \"d\"}\n"),
             Contains("mixed.jsonl:2: mixed document kinds: a loglikelihood document, but the first document (line 1) "
                      "is multiple-choice"));
  CHECK_THAT(err("mixed_gold.jsonl", ok + "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": [1]}\n"),
             Contains("mixed_gold.jsonl:2: mixed document kinds"));
  CHECK_THAT(err("gold_type.jsonl", "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": \"1\"}\n"),
             Contains("gold_type.jsonl:1: gold must be an integer"));
  CHECK_THAT(err("no_gold.jsonl", "{\"context\": \"c\", \"choices\": [\"a\", \"b\"]}\n"),
             Contains("no_gold.jsonl:1: missing \"gold\""));
  CHECK_THAT(err("unknown.jsonl", "{\"text\": \"c\"}\n"), Contains("unknown.jsonl:1: not a task document"));
  CHECK_THAT(err("not_object.jsonl", "[1, 2]\n"), Contains("not_object.jsonl:1: expected a JSON object"));
  CHECK_THAT(err("empty.jsonl", "\n\n"), Contains("empty.jsonl: no documents"));
  CHECK_THAT(err("late_header.jsonl", ok + "{\"rankscope_task\": {\"name\": \"x\"}}\n"),
             Contains("late_header.jsonl:2: the \"rankscope_task\" header must be the first line"));
  CHECK_THAT(err("bad_key.jsonl", "{\"rankscope_task\": {\"nmae\": \"x\"}}\n" + ok),
             Contains("bad_key.jsonl:1: unknown header key \"nmae\""));
  CHECK_THAT(err("bad_metric.jsonl", "{\"rankscope_task\": {\"metrics\": [\"ppl\"]}}\n" + ok),
             Contains("bad_metric.jsonl:1: metric 'ppl' is not available"));
  CHECK_THAT(err("no_shots.jsonl", "{\"rankscope_task\": {\"fewshot_file\": \"missing_shots.jsonl\"}}\n" + ok),
             Contains("missing_shots.jsonl: cannot open"));
  CHECK_THAT(load_error((dir / "does_not_exist.jsonl").string()), Contains("does_not_exist.jsonl: cannot open"));
  CHECK_THAT(load_error("no_such_task"), Contains("unknown task 'no_such_task'"));
}

TEST_CASE("a built-in task with its data missing names the file", "[tasks]") {
  TaskLoadOptions o;
  o.data_dir = scratch_dir("tasks_no_data");
  CHECK_THROWS_WITH(load_task("boolq", o), Contains("boolq/boolq.jsonl: cannot open"));
  CHECK_THROWS_WITH(load_task("hellaswag", o), Contains("hellaswag_val_full.txt.bz2: cannot open"));
  CHECK_THROWS_WITH(load_task("mmlu", o), Contains("mmlu/test: cannot list"));
}

// Regressions found by tests/fuzz (corpus: tests/fuzz/corpus/tasks).
TEST_CASE("task files that are FIFOs or directories are refused without waiting", "[tasks][fuzz]") {
  const auto dir = scratch_dir("tasks_fifo");
  SECTION("a .jsonl user task that is a FIFO (formerly: the read waited for a writer forever)") {
    REQUIRE(::mkfifo((dir / "mine.jsonl").c_str(), 0600) == 0);
    CHECK_THAT(load_error((dir / "mine.jsonl").string()), Contains("mine.jsonl: not a regular file"));
  }
  SECTION("a built-in task's file that is a FIFO") {
    std::filesystem::create_directories(dir / "truthfulqa" / "v0");
    REQUIRE(::mkfifo((dir / "truthfulqa" / "v0" / "mc_task.json").c_str(), 0600) == 0);
    TaskLoadOptions o;
    o.data_dir = dir;
    CHECK_THROWS_WITH(load_task("truthfulqa_mc1", o), Contains("mc_task.json: not a regular file"));
  }
  SECTION("a directory named like a task file") {
    std::filesystem::create_directories(dir / "boolq" / "boolq.jsonl");
    TaskLoadOptions o;
    o.data_dir = dir;
    CHECK_THROWS_WITH(load_task("boolq", o), Contains("boolq.jsonl: not a regular file"));
  }
}

TEST_CASE("JSON nested 100,000 levels deep in a task file is refused before it is parsed", "[tasks][fuzz]") {
  const auto dir = scratch_dir("tasks_deep");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string ok = R"({"context": "q", "choices": ["a", "b"], "gold": 0})";
  const std::string message = load_error(write_file(dir, "deep.jsonl", ok + "\n" + R"({"context": )" + deep + "}\n").string());
  CHECK_THAT(message, Contains("deep.jsonl:2") && Contains("nested more than 128 levels"));
  CHECK(message.find('\n') == std::string::npos);

  std::filesystem::create_directories(dir / "truthfulqa" / "v0");
  write_file(dir / "truthfulqa" / "v0", "mc_task.json", deep);
  TaskLoadOptions o;
  o.data_dir = dir;
  CHECK_THROWS_WITH(load_task("truthfulqa_mc2", o), Contains("mc_task.json") && Contains("nested more than 128 levels"));
}

TEST_CASE("an MMLU subject file that is a link loop is an Error, not a filesystem exception", "[tasks][fuzz]") {
  // Found by the fuzzer (corpus: tests/fuzz/corpus/tasks/s2-c5384): listing the subjects called
  // directory_entry::is_regular_file(), which throws std::filesystem::filesystem_error on a loop.
  const auto dir = scratch_dir("tasks_mmlu_loop");
  std::filesystem::create_directories(dir / "mmlu" / "test");
  std::filesystem::create_directories(dir / "mmlu" / "dev");
  std::filesystem::create_symlink("algebra_test.csv", dir / "mmlu" / "test" / "algebra_test.csv");
  TaskLoadOptions o;
  o.data_dir = dir;
  std::string message = "(no Error)";
  try {
    load_task("mmlu", o);
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK_THAT(message, Contains("algebra_test.csv") && Contains("cannot open"));
}

TEST_CASE("names with control characters in a task file give one-line Errors", "[tasks][fuzz]") {
  // Found by the fuzzer (corpus: tests/fuzz/corpus/tasks/s3-c4870): a "\n" escape in a header key.
  const auto dir = scratch_dir("tasks_control");
  const std::string doc = R"({"context": "q", "choices": ["a", "b"], "gold": 0})";
  const std::string message =
      load_error(write_file(dir, "t.jsonl", R"({"rankscope_task": {"two\nlines": "x"}})" "\n" + doc + "\n").string());
  CHECK_THAT(message, Contains("t.jsonl:1") && Contains("unknown header key \"two\\x0alines\""));
  CHECK(message.find('\n') == std::string::npos);
}
