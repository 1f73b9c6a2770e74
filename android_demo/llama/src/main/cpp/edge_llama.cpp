// JNI bridge from dev.edgekto.llama.LlamaEngine to llama.cpp's public C API (llama.h only, no
// `common`), so the same file builds for Android (CMake + NDK) and for the host test against the
// libllama that llama-cpp-python ships. Strings cross as UTF-8 byte arrays: JNI's NewStringUTF /
// GetStringUTFChars use *modified* UTF-8, which mangles emoji.
#include <jni.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "llama.h"

namespace {

struct Engine {
    llama_model* model = nullptr;
    llama_context* ctx = nullptr;
    const llama_vocab* vocab = nullptr;
    std::vector<llama_token> cached;  // tokens whose KV is in the context (sequence 0)
    int last_reused = 0;              // prompt tokens the last generate call found cached
};

void quiet_log(ggml_log_level level, const char* text, void*) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

std::once_flag g_backend_once;

void throw_java(JNIEnv* env, const char* cls, const std::string& msg) {
    jclass c = env->FindClass(cls);
    if (c) env->ThrowNew(c, msg.c_str());
}

std::string to_string(JNIEnv* env, jbyteArray bytes) {
    jsize n = env->GetArrayLength(bytes);
    std::string s(static_cast<size_t>(n), '\0');
    env->GetByteArrayRegion(bytes, 0, n, reinterpret_cast<jbyte*>(s.data()));
    return s;
}

jbyteArray to_bytes(JNIEnv* env, const std::string& s) {
    jbyteArray out = env->NewByteArray(static_cast<jsize>(s.size()));
    env->SetByteArrayRegion(out, 0, static_cast<jsize>(s.size()), reinterpret_cast<const jbyte*>(s.data()));
    return out;
}

std::string piece(const llama_vocab* vocab, llama_token t) {
    char buf[256];
    int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, false);
    if (n >= 0) return std::string(buf, static_cast<size_t>(n));
    std::string big(static_cast<size_t>(-n), '\0');
    n = llama_token_to_piece(vocab, t, big.data(), -n, 0, false);
    return big.substr(0, static_cast<size_t>(std::max(n, 0)));
}

// Decode tokens[from, to) at positions from.., asking logits only for the last one.
bool decode_range(Engine* e, const std::vector<llama_token>& tokens, size_t from, size_t to) {
    const size_t n_batch = llama_n_batch(e->ctx);
    llama_batch batch = llama_batch_init(static_cast<int32_t>(n_batch), 0, 1);
    bool ok = true;
    for (size_t start = from; start < to && ok; start += n_batch) {
        const size_t end = std::min(to, start + n_batch);
        batch.n_tokens = 0;
        for (size_t i = start; i < end; i++) {
            const int k = batch.n_tokens++;
            batch.token[k] = tokens[i];
            batch.pos[k] = static_cast<llama_pos>(i);
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = 0;
            batch.logits[k] = (i + 1 == to);
        }
        ok = llama_decode(e->ctx, batch) == 0;
    }
    llama_batch_free(batch);
    return ok;
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeLoad(JNIEnv* env, jclass, jbyteArray jpath, jint n_ctx,
                                                                       jint n_threads) {
    std::call_once(g_backend_once, [] {
        llama_log_set(quiet_log, nullptr);  // errors only: the app reports what matters itself
        llama_backend_init();
    });
    const std::string path = to_string(env, jpath);
    llama_model_params mp = llama_model_default_params();
    llama_model* model = llama_model_load_from_file(path.c_str(), mp);
    if (!model) {
        throw_java(env, "java/io/IOException", "llama.cpp could not load " + path + " (not a GGUF file, or a newer format)");
        return 0;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_ctx);
    cp.n_batch = std::min<uint32_t>(512, cp.n_ctx);
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    // As llama-cpp-python (the Python runtime, whose numbers the export gate and `edge-runtime
    // check` report) sets them: with flash attention on, greedy answers drift from the runtime's.
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        llama_model_free(model);
        throw_java(env, "java/io/IOException", "llama.cpp could not create a context of " + std::to_string(n_ctx) + " tokens for " + path);
        return 0;
    }
    auto* e = new Engine{model, ctx, llama_model_get_vocab(model), {}};
    return reinterpret_cast<jlong>(e);
}

JNIEXPORT void JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeFree(JNIEnv*, jclass, jlong h) {
    auto* e = reinterpret_cast<Engine*>(h);
    if (!e) return;
    llama_free(e->ctx);
    llama_model_free(e->model);
    delete e;
}

// Forget the cached prefix (the next prompt is computed from scratch).
JNIEXPORT void JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeReset(JNIEnv*, jclass, jlong h) {
    auto* e = reinterpret_cast<Engine*>(h);
    llama_memory_clear(llama_get_memory(e->ctx), true);
    e->cached.clear();
}

JNIEXPORT jint JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeLastReused(JNIEnv*, jclass, jlong h) {
    return reinterpret_cast<Engine*>(h)->last_reused;
}

// {add_bos, bos, eos, n_vocab, n_ctx}
JNIEXPORT jintArray JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeInfo(JNIEnv* env, jclass, jlong h) {
    auto* e = reinterpret_cast<Engine*>(h);
    jint v[5] = {llama_vocab_get_add_bos(e->vocab) ? 1 : 0, llama_vocab_bos(e->vocab), llama_vocab_eos(e->vocab),
                 llama_vocab_n_tokens(e->vocab), static_cast<jint>(llama_n_ctx(e->ctx))};
    jintArray out = env->NewIntArray(5);
    env->SetIntArrayRegion(out, 0, 5, v);
    return out;
}

JNIEXPORT jbyteArray JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeMeta(JNIEnv* env, jclass, jlong h, jbyteArray jkey) {
    auto* e = reinterpret_cast<Engine*>(h);
    const std::string key = to_string(env, jkey);
    int n = llama_model_meta_val_str(e->model, key.c_str(), nullptr, 0);
    if (n < 0) return nullptr;
    std::string val(static_cast<size_t>(n) + 1, '\0');
    llama_model_meta_val_str(e->model, key.c_str(), val.data(), val.size());
    val.resize(static_cast<size_t>(n));
    return to_bytes(env, val);
}

JNIEXPORT jintArray JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeTokenize(JNIEnv* env, jclass, jlong h, jbyteArray jtext,
                                                                              jboolean add_special, jboolean parse_special) {
    auto* e = reinterpret_cast<Engine*>(h);
    const std::string text = to_string(env, jtext);
    std::vector<llama_token> ids(text.size() + 8);
    int n = llama_tokenize(e->vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(), static_cast<int32_t>(ids.size()),
                           add_special, parse_special);
    if (n < 0) {
        ids.resize(static_cast<size_t>(-n));
        n = llama_tokenize(e->vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(), static_cast<int32_t>(ids.size()),
                           add_special, parse_special);
    }
    jintArray out = env->NewIntArray(n);
    env->SetIntArrayRegion(out, 0, n, ids.data());
    return out;
}

JNIEXPORT jbyteArray JNICALL Java_dev_edgekto_llama_LlamaEngine_nativePiece(JNIEnv* env, jclass, jlong h, jint token) {
    return to_bytes(env, piece(reinterpret_cast<Engine*>(h)->vocab, token));
}

// Streams up to max_tokens tokens after `prompt` to sink.onToken(int id, byte[] piece) (return
// false to stop; ignore_eos runs the fixed length a latency benchmark needs). The KV of the longest common prefix with the previous call is kept, so a chat's
// earlier turns are not recomputed; a fully cached prompt still recomputes its last token to get
// fresh logits. Returns the number of tokens generated, or -1 after throwing.
JNIEXPORT jint JNICALL Java_dev_edgekto_llama_LlamaEngine_nativeGenerate(JNIEnv* env, jclass, jlong h, jintArray jprompt,
                                                                         jint max_tokens, jfloat temperature, jint seed,
                                                                         jboolean ignore_eos, jobject sink) {
    auto* e = reinterpret_cast<Engine*>(h);
    const jsize n_prompt = env->GetArrayLength(jprompt);
    std::vector<llama_token> tokens(static_cast<size_t>(n_prompt));
    env->GetIntArrayRegion(jprompt, 0, n_prompt, tokens.data());
    const int n_ctx = static_cast<int>(llama_n_ctx(e->ctx));
    if (n_prompt == 0 || n_prompt >= n_ctx) {
        throw_java(env, "java/lang/IllegalArgumentException",
                   "prompt of " + std::to_string(n_prompt) + " tokens does not fit the context of " + std::to_string(n_ctx) + " tokens");
        return -1;
    }
    jmethodID on_token = env->GetMethodID(env->GetObjectClass(sink), "onToken", "(I[B)Z");
    if (!on_token) return -1;

    size_t keep = 0;
    while (keep < e->cached.size() && keep < tokens.size() && e->cached[keep] == tokens[keep]) keep++;
    if (keep == tokens.size()) keep--;
    llama_memory_t mem = llama_get_memory(e->ctx);
    if (!llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(keep), -1)) {
        llama_memory_clear(mem, true);
        keep = 0;
    }
    e->cached.resize(keep);
    e->last_reused = static_cast<int>(keep);
    if (!decode_range(e, tokens, keep, tokens.size())) {
        llama_memory_clear(mem, true);
        e->cached.clear();
        throw_java(env, "java/lang/IllegalStateException", "llama_decode failed on the prompt");
        return -1;
    }
    e->cached = tokens;

    llama_sampler* smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (temperature <= 0.0f) {
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    } else {
        llama_sampler_chain_add(smpl, llama_sampler_init_temp(temperature));
        llama_sampler_chain_add(smpl, llama_sampler_init_dist(static_cast<uint32_t>(seed)));
    }
    const int budget = std::min<int>(max_tokens, n_ctx - n_prompt);
    int generated = 0;
    while (generated < budget) {
        const llama_token t = llama_sampler_sample(smpl, e->ctx, -1);
        if (!ignore_eos && llama_vocab_is_eog(e->vocab, t)) break;
        generated++;
        jbyteArray bytes = to_bytes(env, piece(e->vocab, t));
        const jboolean more = env->CallBooleanMethod(sink, on_token, static_cast<jint>(t), bytes);
        env->DeleteLocalRef(bytes);
        if (env->ExceptionCheck() || !more || generated >= budget) break;
        e->cached.push_back(t);
        if (!decode_range(e, e->cached, e->cached.size() - 1, e->cached.size())) {
            e->cached.pop_back();
            throw_java(env, "java/lang/IllegalStateException", "llama_decode failed while generating");
            generated = -1;
            break;
        }
    }
    llama_sampler_free(smpl);
    return generated;
}

}  // extern "C"
