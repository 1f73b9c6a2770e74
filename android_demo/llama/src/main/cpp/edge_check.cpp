// edge_check: the on-device alignment re-check in C++, for boards and phones without Python.
//
//   edge_check BUNDLE_DIR [--artifact NAME.gguf] [--threads N] [--limit ROWS] [--out FILE.json]
//
// 1. Verifies the bundle's integrity: manifest format and schema version, every listed file's size
//    and sha256 (the GGUF, every file of other artifacts, golden.jsonl), paths kept inside the folder.
//    A mismatch: exit 2, naming the file, before any model is loaded. (The Python runtime also
//    refuses symlinks and unlisted files in artifact folders; this check does not.)
// 2. Loads the GGUF artifact with llama.cpp (the same context settings as llama-cpp-python, which
//    the export's gate used) and, for every row of golden.jsonl, measures what
//    edge_kto_runtime.check.check_artifact measures: the top-k KL (fp top-16 + a rest bin) and top-1
//    agreement along the fp greedy continuation, the preference pairs' sign agreement, and the
//    greedy continuation itself (compared with the fp one; its text is scored by the caller with the
//    task's verifier, which lives in Python).
// 3. Writes JSON: per row and summarised, plus the thresholds' verdict on KLD / top-1 / preference.
//
// Exit codes as the CLIs: 0 pass, 3 gate failed, 2 bad input, 1 llama.cpp failed.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"
#include "nlohmann/json.hpp"

using json = nlohmann::json;

namespace {

struct UserError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- sha256 (FIPS 180-4)

class Sha256 {
  public:
    void update(const uint8_t* p, size_t n) {
        total_ += n;
        while (n) {
            size_t take = std::min(n, size_t(64) - fill_);
            std::memcpy(buf_.data() + fill_, p, take);
            fill_ += take, p += take, n -= take;
            if (fill_ == 64) block(buf_.data()), fill_ = 0;
        }
    }
    std::string hex() {
        uint64_t bits = total_ * 8;
        uint8_t pad = 0x80;
        update(&pad, 1);
        uint8_t zero = 0;
        while (fill_ != 56) update(&zero, 1);
        for (int i = 7; i >= 0; i--) {
            uint8_t b = uint8_t(bits >> (8 * i));
            update(&b, 1);
        }
        char out[65];
        for (int i = 0; i < 8; i++) std::snprintf(out + 8 * i, 9, "%08x", h_[i]);
        return std::string(out, 64);
    }

  private:
    static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
    void block(const uint8_t* p) {
        static const uint32_t k[64] = {
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
            0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
            0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
            0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
            0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
            0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
            0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
        }
        h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
    }
    std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::array<uint8_t, 64> buf_{};
    size_t fill_ = 0;
    uint64_t total_ = 0;
};

// ---------------------------------------------------------------- bundle verification

bool safe_rel(const std::string& rel) {
    if (rel.empty() || rel[0] == '/') return false;
    std::stringstream ss(rel);
    std::string part;
    while (std::getline(ss, part, '/'))
        if (part == "..") return false;
    return true;
}

void verify_file(const std::string& root, const std::string& rel, const json& entry) {
    if (!safe_rel(rel)) throw UserError(root + ": path '" + rel + "' escapes the bundle folder");
    const std::string path = root + "/" + rel;
    std::ifstream f(path, std::ios::binary);
    if (!f) throw UserError(path + ": listed in manifest.json but missing");
    Sha256 h;
    std::vector<char> buf(1 << 20);
    uint64_t n = 0;
    while (f) {
        f.read(buf.data(), std::streamsize(buf.size()));
        std::streamsize got = f.gcount();
        if (got <= 0) break;
        h.update(reinterpret_cast<const uint8_t*>(buf.data()), size_t(got));
        n += uint64_t(got);
    }
    if (!entry.contains("bytes") || !entry.contains("sha256"))
        throw UserError(root + "/manifest.json: entry for '" + rel + "' lacks bytes/sha256");
    if (n != entry["bytes"].get<uint64_t>())
        throw UserError(path + ": size " + std::to_string(n) + " != manifest " + entry["bytes"].dump());
    if (h.hex() != entry["sha256"].get<std::string>())
        throw UserError(path + ": sha256 mismatch (the file was changed or corrupted); refused");
}

json verify_bundle(const std::string& root) {
    std::ifstream mf(root + "/manifest.json");
    if (!mf) throw UserError(root + ": not a bundle (no manifest.json)");
    json m;
    try {
        m = json::parse(mf);
    } catch (const std::exception& e) {
        throw UserError(root + "/manifest.json: not JSON (" + e.what() + ")");
    }
    if (m.value("format", "") != "edge-kto-bundle" || m.value("schema_version", 0) != 1)
        throw UserError(root + "/manifest.json: not an edge-kto bundle of schema 1");
    for (const auto& a : m.at("artifacts")) {
        std::string p = a.at("path").get<std::string>();
        if (a.contains("files")) {
            std::string dir = p.substr(0, p.find_last_not_of('/') + 1);
            for (auto it = a["files"].begin(); it != a["files"].end(); ++it) verify_file(root, dir + "/" + it.key(), *it);
        } else {
            verify_file(root, p, a);
        }
    }
    if (!m.contains("golden")) throw UserError(root + ": the bundle has no golden set");
    verify_file(root, m["golden"].at("path").get<std::string>(), m["golden"]);
    return m;
}

// ---------------------------------------------------------------- llama.cpp measurements

struct Model {
    llama_model* model = nullptr;
    llama_context* ctx = nullptr;
    const llama_vocab* vocab = nullptr;
    int n_vocab = 0;
};

// Decode `toks` at positions pos0.. on sequence 0 in n_batch chunks: `want(i)` says which tokens get
// logits, `after(start, end)` reads them after each chunk (logits index i - start). One batch
// owner for both passes below, freed on every path.
template <class Want, class After>
void decode_chunks(Model& M, const std::vector<llama_token>& toks, int pos0, Want want, After after) {
    const int n_batch = int(llama_n_batch(M.ctx));
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    for (int start = 0; start < int(toks.size()); start += n_batch) {
        const int end = std::min(int(toks.size()), start + n_batch);
        batch.n_tokens = 0;
        for (int i = start; i < end; i++) {
            const int k = batch.n_tokens++;
            batch.token[k] = toks[size_t(i)];
            batch.pos[k] = pos0 + i;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = 0;
            batch.logits[k] = want(i, end);
        }
        if (llama_decode(M.ctx, batch) != 0) {
            llama_batch_free(batch);
            throw std::runtime_error("llama_decode failed");
        }
        after(start, end);
    }
    llama_batch_free(batch);
}

// Log-softmax rows (double) of the logits after each of `positions`, computed in one fresh pass.
std::vector<std::vector<double>> logprobs(Model& M, const std::vector<llama_token>& ids, const std::vector<int>& positions) {
    llama_memory_clear(llama_get_memory(M.ctx), true);
    std::vector<std::vector<double>> rows(positions.size());
    auto want = [&](int i, int) { return std::find(positions.begin(), positions.end(), i) != positions.end(); };
    auto after = [&](int start, int end) {
        for (int i = start; i < end; i++) {
            for (size_t r = 0; r < positions.size(); r++) {
                if (positions[r] != i) continue;
                const float* lg = llama_get_logits_ith(M.ctx, i - start);
                double mx = lg[0];
                for (int v = 1; v < M.n_vocab; v++) mx = std::max(mx, double(lg[v]));
                double s = 0;
                for (int v = 0; v < M.n_vocab; v++) s += std::exp(double(lg[v]) - mx);
                const double lse = mx + std::log(s);
                rows[r].resize(size_t(M.n_vocab));
                for (int v = 0; v < M.n_vocab; v++) rows[r][size_t(v)] = double(lg[v]) - lse;
            }
        }
    };
    decode_chunks(M, ids, 0, want, after);
    llama_memory_clear(llama_get_memory(M.ctx), true);
    return rows;
}

// Greedy ids after `prompt` (at most n, stopping after an end-of-generation id), from an empty KV.
std::vector<llama_token> greedy(Model& M, const std::vector<llama_token>& prompt, int n) {
    llama_memory_clear(llama_get_memory(M.ctx), true);
    auto last_only = [](int i, int end) { return i + 1 == end; };
    auto nothing = [](int, int) {};
    std::vector<llama_token> out;
    decode_chunks(M, prompt, 0, last_only, nothing);
    for (int i = 0; i < n; i++) {
        const float* lg = llama_get_logits_ith(M.ctx, -1);
        const llama_token t = llama_token(std::max_element(lg, lg + M.n_vocab) - lg);
        out.push_back(t);
        if (llama_vocab_is_eog(M.vocab, t) || i + 1 == n) break;
        decode_chunks(M, {t}, int(prompt.size() + out.size()) - 1, last_only, nothing);
    }
    return out;
}

double score(Model& M, const std::vector<llama_token>& p, const std::vector<llama_token>& c) {
    std::vector<llama_token> ids(p);
    ids.insert(ids.end(), c.begin(), c.end());
    std::vector<int> pos;
    for (size_t i = 0; i < c.size(); i++) pos.push_back(int(p.size() + i) - 1);
    auto rows = logprobs(M, ids, pos);
    double s = 0;
    for (size_t i = 0; i < c.size(); i++) s += rows[i][size_t(c[i])];
    return s;
}

double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? NAN : s / double(v.size());
}

std::vector<llama_token> ids_of(const json& a) { return a.get<std::vector<llama_token>>(); }

json check_rows(Model& M, const std::vector<json>& golden) {
    std::vector<double> kl_all, top1_all, pref, greedy_eq;
    json rows = json::array();
    for (const auto& row : golden) {
        const auto p = ids_of(row.at("prompt_ids"));
        const auto g = ids_of(row.at("greedy_ids"));
        json r = {{"id", row.value("id", json())}};
        if (!g.empty()) {
            std::vector<llama_token> ids(p);
            ids.insert(ids.end(), g.begin(), g.end());
            std::vector<int> pos;
            for (size_t i = 0; i < g.size(); i++) pos.push_back(int(p.size() + i) - 1);
            auto q = logprobs(M, ids, pos);
            // a finished student: KL and top-1 against the finished fp weights the artifact stores
            // (edge_kto_runtime.check); preference stays against the fp student (task accuracy: the caller)
            const auto& top = row.contains("exported_top_logprobs") ? row.at("exported_top_logprobs")
                                                                     : row.at("top_logprobs");
            for (size_t i = 0; i < q.size(); i++) {
                double kl = 0, ps = 0, qs = 0;
                for (const auto& tv : top[i]) {
                    const int t = tv[0].get<int>();
                    const double lp = tv[1].get<double>(), pp = std::exp(lp), qq = std::exp(q[i][size_t(t)]);
                    kl += pp * (lp - q[i][size_t(t)]);
                    ps += pp, qs += qq;
                }
                const double p_rest = std::max(1.0 - ps, 0.0), q_rest = std::max(1.0 - qs, 1e-12);
                if (p_rest > 1e-12) kl += p_rest * (std::log(p_rest) - std::log(q_rest));
                kl_all.push_back(kl);
                const int fp_top = top[i][0][0].get<int>();
                const int argmax = int(std::max_element(q[i].begin(), q[i].end()) - q[i].begin());
                top1_all.push_back(argmax == fp_top ? 1.0 : 0.0);
            }
        }
        const auto comps = row.value("completions", json::array());
        std::vector<double> art(comps.size(), NAN);
        auto art_logp = [&](size_t i) {
            if (std::isnan(art[i])) art[i] = score(M, p, ids_of(comps[i].at("ids")));
            return art[i];
        };
        for (size_t gi = 0; gi < comps.size(); gi++) {
            if (!comps[gi].value("label", false) || comps[gi].value("hard", false)) continue;
            for (size_t bi = 0; bi < comps.size(); bi++) {
                if (comps[bi].value("label", false) || comps[bi].value("hard", false)) continue;
                const double m_fp = comps[gi]["logp"].get<double>() - comps[bi]["logp"].get<double>();
                const double m_art = art_logp(gi) - art_logp(bi);
                pref.push_back((m_fp > 0) == (m_art > 0) ? 1.0 : 0.0);
            }
        }
        const auto art_ids = greedy(M, p, std::max<int>(int(g.size()), 1));
        greedy_eq.push_back(art_ids == g ? 1.0 : 0.0);
        r["greedy_ids"] = art_ids;
        r["greedy_match"] = art_ids == g;
        rows.push_back(r);
    }
    std::vector<double> sorted(kl_all);
    std::sort(sorted.begin(), sorted.end());
    double p99 = NAN;
    if (!sorted.empty()) {  // numpy's default (linear) percentile
        const double at = 0.99 * double(sorted.size() - 1);
        const size_t lo = size_t(at);
        p99 = sorted[lo] + (sorted[std::min(lo + 1, sorted.size() - 1)] - sorted[lo]) * (at - double(lo));
    }
    return {{"rows", rows},
            {"positions", kl_all.size()},
            {"kld_mean", mean(kl_all)},
            {"kld_p99", p99},
            {"top1_agree", mean(top1_all)},
            {"pairs", pref.size()},
            {"pref_agree", pref.empty() ? json() : json(mean(pref))},
            {"greedy_match", mean(greedy_eq)}};
}

void quiet_log(ggml_log_level level, const char* text, void*) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

}  // namespace

int main(int argc, char** argv) {
    std::string root, artifact, out_path;
    int threads = 2;
    size_t limit = 0;  // 0: every golden row
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw UserError(a + " needs a value");
            return argv[++i];
        };
        try {
            if (a == "--artifact") artifact = next();
            else if (a == "--threads") threads = std::stoi(next());
            else if (a == "--out") out_path = next();
            else if (a == "--limit") limit = size_t(std::stoul(next()));
            else if (root.empty() && a.rfind("--", 0) != 0) root = a;
            else throw UserError("unknown argument " + a);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "edge_check: error: %s\n", e.what());
            return 2;
        }
    }
    if (root.empty()) {
        std::fprintf(stderr, "usage: edge_check BUNDLE_DIR [--artifact NAME.gguf] [--threads N] [--limit ROWS] [--out FILE]\n");
        return 2;
    }
    try {
        const json m = verify_bundle(root);
        if (artifact.empty())
            for (const auto& a : m["artifacts"])
                if (a.value("backend", "") == "llama.cpp") {
                    artifact = a["path"].get<std::string>();
                    break;
                }
        if (artifact.empty()) throw UserError(root + ": no llama.cpp artifact");
        std::vector<json> golden;
        std::ifstream gf(root + "/" + m["golden"]["path"].get<std::string>());
        std::string line;
        for (int ln = 1; std::getline(gf, line) && (limit == 0 || golden.size() < limit); ln++) {
            if (line.empty()) continue;
            try {
                golden.push_back(json::parse(line));
            } catch (const std::exception& e) {
                throw UserError(root + "/golden.jsonl:" + std::to_string(ln) + ": " + e.what());
            }
        }
        llama_log_set(quiet_log, nullptr);
        llama_backend_init();
        Model M;
        M.model = llama_model_load_from_file((root + "/" + artifact).c_str(), llama_model_default_params());
        if (!M.model) throw std::runtime_error("llama.cpp could not load " + artifact);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 2048;
        cp.n_batch = 512;
        cp.n_threads = cp.n_threads_batch = threads;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;  // as llama-cpp-python: the gate's numbers
        M.ctx = llama_init_from_model(M.model, cp);
        if (!M.ctx) throw std::runtime_error("llama.cpp could not create a context");
        M.vocab = llama_model_get_vocab(M.model);
        M.n_vocab = llama_vocab_n_tokens(M.vocab);
        json res = check_rows(M, golden);
        const json th = m.value("alignment", json::object()).value("thresholds", json::object());
        const double kld_max = th.value("kld_mean_max", 0.25), top1_min = th.value("top1_min", 0.75),
                     pref_min = th.value("pref_agree_min", 0.90);
        json failures = json::array();
        if (res["kld_mean"].get<double>() > kld_max) failures.push_back("kld_mean > " + std::to_string(kld_max));
        if (res["top1_agree"].get<double>() < top1_min) failures.push_back("top1_agree < " + std::to_string(top1_min));
        if (!res["pref_agree"].is_null() && res["pref_agree"].get<double>() < pref_min)
            failures.push_back("pref_agree < " + std::to_string(pref_min));
        res["artifact"] = artifact;
        res["failures"] = failures;
        res["passed"] = failures.empty();
        res["llama_cpp_system_info"] = llama_print_system_info();
        llama_free(M.ctx);
        llama_model_free(M.model);
        const std::string text = res.dump(1);
        if (out_path.empty()) {
            std::puts(text.c_str());
        } else {
            std::ofstream(out_path) << text << "\n";
        }
        std::fprintf(stderr, "edge_check: %s: KLD %.4f, top-1 %.3f, greedy match %.3f: %s\n", artifact.c_str(),
                     res["kld_mean"].get<double>(), res["top1_agree"].get<double>(), res["greedy_match"].get<double>(),
                     failures.empty() ? "pass" : "FAIL");
        return failures.empty() ? 0 : 3;
    } catch (const UserError& e) {
        std::fprintf(stderr, "edge_check: error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "edge_check: failed: %s\n", e.what());
        return 1;
    }
}
