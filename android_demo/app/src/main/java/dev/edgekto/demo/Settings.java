package dev.edgekto.demo;

import android.content.Context;
import android.content.SharedPreferences;

/** What the settings screen edits; read by MainActivity when it (re)loads a bundle. */
final class Settings {
    private final SharedPreferences prefs;

    Settings(Context ctx) {
        prefs = ctx.getSharedPreferences("settings", Context.MODE_PRIVATE);
    }

    /** Half the cores, at most 4: on big.LITTLE phones more threads land on slow cores and hurt TTFT. */
    static int defaultThreads() {
        return Math.max(1, Math.min(4, Runtime.getRuntime().availableProcessors() / 2));
    }

    String bundle() { return prefs.getString("bundle", null); }
    String artifact() { return prefs.getString("artifact", null); }
    int threads() { return prefs.getInt("threads", defaultThreads()); }
    int maxTokens() { return prefs.getInt("max_tokens", 256); }
    float temperature() { return prefs.getFloat("temperature", 0f); }
    /** Bumped on every save, so the chat screen knows to reload the engine. */
    int version() { return prefs.getInt("version", 0); }

    void save(String bundle, String artifact, int threads, int maxTokens, float temperature) {
        prefs.edit().putString("bundle", bundle).putString("artifact", artifact).putInt("threads", threads)
                .putInt("max_tokens", maxTokens).putFloat("temperature", temperature).putInt("version", version() + 1).apply();
    }

    void selectBundle(String bundle) {
        prefs.edit().putString("bundle", bundle).remove("artifact").putInt("version", version() + 1).apply();
    }
}
