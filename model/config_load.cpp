// load_model_config: a model directory's config.json, plus the BOS/EOS ids of
// generation_config.json and tokenizer_config.json when present (policy in config.h).
#include <algorithm>
#include <charconv>

#include "core/file.h"
#include "model/config.h"
#include "model/json_util.h"

namespace mnemo {
namespace {

namespace json = boost::json;
using json_util::Fields;

std::string join_path(const std::string& dir, const char* name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

Result<json::value> read_json_object(const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  MNEMO_ASSIGN_OR_RETURN(json::value v, json_util::parse(text, path));
  if (!v.is_object()) {
    return invalid_argument(path, ": expected a JSON object, got ", json_util::describe(v));
  }
  return v;
}

// BOS/EOS ids one file states explicitly.
struct TokenIds {
  std::vector<int64_t> bos, eos;
  bool have_bos = false, have_eos = false;
};

Status read_token_ids(const Fields& f, TokenIds* ids) {
  MNEMO_RETURN_IF_ERROR(f.read_ids("bos_token_id", &ids->bos, &ids->have_bos));
  return f.read_ids("eos_token_id", &ids->eos, &ids->have_eos);
}

// tokenizer_config.json names special tokens by text ("<s>" or {"content": "<s>"}); the ids come
// from its added_tokens_decoder {"1": {"content": "<s>"}}. Leaves `out` unchanged when it names
// none or the text is not an added token.
Status resolve_tokenizer_token(const Fields& f, const char* key, std::vector<int64_t>* out) {
  const json::value* v = f.get(key);
  if (!v) return Status::Ok();
  std::string content;
  if (v->is_string()) {
    content = std::string(v->get_string());
  } else if (v->is_object()) {
    MNEMO_RETURN_IF_ERROR(f.nested(v->get_object(), key).read("content", &content));
  } else {
    return f.type_error(key, "string or object", *v);
  }
  const json::object* decoder = nullptr;
  MNEMO_RETURN_IF_ERROR(f.read_object("added_tokens_decoder", &decoder));
  if (!decoder || content.empty()) return Status::Ok();
  for (const auto& [id_text, entry] : *decoder) {
    const json::object* e = entry.if_object();
    const json::value* c = e ? e->if_contains("content") : nullptr;
    if (!c || !c->is_string() || c->get_string() != content) continue;
    int64_t id = -1;
    const char* end = id_text.data() + id_text.size();
    const auto [stop, ec] = std::from_chars(id_text.data(), end, id);
    if (ec == std::errc() && stop == end && id >= 0) *out = {id};
    break;
  }
  return Status::Ok();
}

}  // namespace

Result<ModelConfig> load_model_config(const std::string& model_dir) {
  if (!is_directory(model_dir)) {
    return not_found("model directory '", model_dir, "' does not exist");
  }
  const std::string path = join_path(model_dir, "config.json");
  if (!file_exists(path)) {
    return not_found(path, ": no such file (every model directory needs config.json)");
  }
  MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  MNEMO_ASSIGN_OR_RETURN(ModelConfig c, parse_model_config(text, path));
  // parse_model_config filled absent ids with family defaults; find which ones config.json states.
  MNEMO_ASSIGN_OR_RETURN(json::value root, json_util::parse(text, path));
  TokenIds ids;
  MNEMO_RETURN_IF_ERROR(read_token_ids(Fields(root.get_object(), path), &ids));

  const std::string gen_path = join_path(model_dir, "generation_config.json");
  if (file_exists(gen_path)) {
    MNEMO_ASSIGN_OR_RETURN(json::value gen, read_json_object(gen_path));
    TokenIds more;
    MNEMO_RETURN_IF_ERROR(read_token_ids(Fields(gen.get_object(), gen_path), &more));
    if (!ids.have_bos && more.have_bos) {
      ids.bos = more.bos;
      ids.have_bos = true;
    }
    // EOS: the union, config.json's first; generate() stops on any of them.
    for (int64_t id : more.eos) {
      if (std::find(ids.eos.begin(), ids.eos.end(), id) == ids.eos.end()) ids.eos.push_back(id);
    }
    ids.have_eos = ids.have_eos || more.have_eos;
  }
  const std::string tok_path = join_path(model_dir, "tokenizer_config.json");
  if ((!ids.have_bos || !ids.have_eos) && file_exists(tok_path)) {
    MNEMO_ASSIGN_OR_RETURN(json::value tok, read_json_object(tok_path));
    const Fields t(tok.get_object(), tok_path);
    if (!ids.have_bos) MNEMO_RETURN_IF_ERROR(resolve_tokenizer_token(t, "bos_token", &ids.bos));
    if (!ids.have_eos) MNEMO_RETURN_IF_ERROR(resolve_tokenizer_token(t, "eos_token", &ids.eos));
    ids.have_bos = ids.have_bos || !ids.bos.empty();
    ids.have_eos = ids.have_eos || !ids.eos.empty();
  }
  if (ids.have_bos) c.bos_token_ids = ids.bos;  // else the family default stays
  if (ids.have_eos) c.eos_token_ids = ids.eos;
  for (const auto* list : {&c.bos_token_ids, &c.eos_token_ids}) {
    for (int64_t id : *list) {
      if (id >= c.vocab_size) {
        return invalid_argument(model_dir, ": ", list == &c.bos_token_ids ? "bos" : "eos",
                                " token id ", id, " is outside the vocabulary (vocab_size ",
                                c.vocab_size, ")");
      }
    }
  }
  return c;
}

}  // namespace mnemo
