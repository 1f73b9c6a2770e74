package dev.edgekto.demo;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.Intent;
import android.database.Cursor;
import android.graphics.Typeface;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.OpenableColumns;
import android.view.LayoutInflater;
import android.view.Menu;
import android.view.MenuItem;
import android.view.View;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import dev.edgekto.core.ChatEngine;
import dev.edgekto.core.LatencyStats;
import dev.edgekto.llama.LatencyBench;
import dev.edgekto.llama.LlamaChat;
import java.io.File;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The chat screen: streams the student's answer token by token, shows TTFT and tokens/s of the
 * last answer in an overlay, and records thumbs up/down per answer. All model work runs on one
 * worker thread; the UI thread only appends text.
 */
public class MainActivity extends Activity {
    private static final int REQ_IMPORT = 1, REQ_EXPORT = 2;

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());
    private final List<String[]> conversation = new ArrayList<>();
    private Settings settings;
    private FeedbackDb feedback;
    private volatile BundleRepository.Loaded loaded; // set on the worker, read on the UI thread
    private int loadedVersion = -1;
    private volatile boolean stopRequested;
    private boolean generating;

    private TextView status, overlay;
    private LinearLayout messages;
    private ScrollView scroll;
    private EditText input;
    private Button send;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        status = findViewById(R.id.status);
        overlay = findViewById(R.id.overlay);
        messages = findViewById(R.id.messages);
        scroll = findViewById(R.id.scroll);
        input = findViewById(R.id.input);
        send = findViewById(R.id.send);
        settings = new Settings(this);
        feedback = new FeedbackDb(this);
        send.setOnClickListener(v -> {
            if (generating) stopRequested = true;
            else onSend();
        });
    }

    @Override
    protected void onResume() {
        super.onResume();
        if (settings.version() != loadedVersion && !generating) loadBundle();
    }

    @Override
    protected void onDestroy() {
        stopRequested = true;
        worker.execute(this::closeEngine);
        worker.shutdown();
        feedback.close();
        super.onDestroy();
    }

    private void closeEngine() {
        if (loaded != null) loaded.engine.close();
        loaded = null;
    }

    /** Verify the selected bundle (manifest + every sha256) and load its engine, off the UI thread. */
    private void loadBundle() {
        loadedVersion = settings.version();
        send.setEnabled(false);
        status.setText("Verifying bundle…");
        worker.execute(() -> {
            closeEngine();
            try {
                BundleRepository.Loaded l = BundleRepository.open(this, settings);
                loaded = l;
                ui.post(() -> {
                    conversation.clear();
                    messages.removeAllViews();
                    status.setText(String.format(Locale.ROOT, "%s · verified in %d ms, loaded in %d ms", l.engine.describe(),
                            l.verifyMillis, l.loadMillis));
                    send.setEnabled(true);
                });
            } catch (Exception e) {
                ui.post(() -> {
                    status.setText("No model loaded.");
                    showError("Cannot use this bundle", e);
                });
            }
        });
    }

    private void onSend() {
        String text = input.getText().toString().trim();
        if (text.isEmpty() || loaded == null) return;
        input.setText("");
        addBubble(text);
        conversation.add(new String[] {"user", text});
        List<String[]> prompt = new ArrayList<>();
        if (loaded.systemPrompt != null) prompt.add(new String[] {"system", loaded.systemPrompt});
        prompt.addAll(conversation);

        View answer = LayoutInflater.from(this).inflate(R.layout.item_answer, messages, false);
        TextView answerText = answer.findViewById(R.id.text);
        messages.addView(answer);
        generating = true;
        stopRequested = false;
        send.setText(R.string.stop);
        int maxTokens = settings.maxTokens();
        float temperature = settings.temperature();
        BundleRepository.Loaded l = loaded;
        worker.execute(() -> {
            try {
                ChatEngine.Answer a = l.engine.chat(prompt, maxTokens, temperature, delta -> {
                    ui.post(() -> {
                        answerText.append(delta);
                        scroll.post(() -> scroll.fullScroll(View.FOCUS_DOWN));
                    });
                    return !stopRequested;
                });
                String id = UUID.randomUUID().toString();
                feedback.logCompletion(id, prompt, a.text, l.modelLabel, l.manifestSha256);
                ui.post(() -> finishAnswer(answer, id, a));
            } catch (Exception e) {
                ui.post(() -> {
                    finishAnswer(answer, null, null);
                    showError("Generation failed", e);
                });
            }
        });
    }

    private void finishAnswer(View answer, String requestId, ChatEngine.Answer a) {
        generating = false;
        send.setText(R.string.send);
        if (a == null) return;
        conversation.add(new String[] {"assistant", a.text});
        String stats = a.timer.overlay() + (a.stop.equals("eos") ? "" : " · " + a.stop);
        ((TextView) answer.findViewById(R.id.stats)).setText(String.format(Locale.ROOT, "%d prompt tokens", a.promptTokens));
        overlay.setText(stats);
        overlay.setVisibility(View.VISIBLE);
        Button up = answer.findViewById(R.id.up), down = answer.findViewById(R.id.down);
        up.setEnabled(true);
        down.setEnabled(true);
        View.OnClickListener rate = v -> {
            boolean good = v == up;
            worker.execute(() -> feedback.rate(requestId, good));
            up.setAlpha(good ? 1f : 0.3f);
            down.setAlpha(good ? 0.3f : 1f);
        };
        up.setOnClickListener(rate);
        down.setOnClickListener(rate);
    }

    /**
     * `edge-runtime bench --runs 100`'s run on this phone (5 warm-up + 100 runs, 128 prompt + 64
     * generated tokens, greedy, KV reset per run), so the two can be compared side by side. Shorter
     * than the CLI's default 200 runs (defaults.BENCH_RUNS) to keep the phone responsive.
     */
    private void runBenchmark() {
        if (loaded == null || generating || !(loaded.engine instanceof LlamaChat)) {
            status.setText("The benchmark needs a loaded GGUF artifact and no answer in progress.");
            return;
        }
        LlamaChat chat = (LlamaChat) loaded.engine;
        generating = true;
        send.setEnabled(false);
        status.setText("Benchmarking: 105 runs…");
        worker.execute(() -> {
            Map<String, LatencyStats> r = LatencyBench.run(chat.engine(), 5, 100, 128, 64, 0);
            String table = LatencyBench.table(r);
            ui.post(() -> {
                generating = false;
                send.setEnabled(true);
                status.setText(chat.describe());
                TextView tv = new TextView(this);
                tv.setTypeface(Typeface.MONOSPACE);
                tv.setTextIsSelectable(true);
                tv.setPadding(32, 16, 32, 0);
                tv.setText(chat.describe() + "\n\n" + table);
                new AlertDialog.Builder(this).setTitle("Latency").setView(tv).setPositiveButton(android.R.string.ok, null).show();
            });
        });
    }

    private void addBubble(String text) {
        TextView tv = new TextView(this);
        tv.setText(text);
        tv.setTextSize(16);
        tv.setPadding(8, 8, 8, 16);
        tv.setTextAlignment(View.TEXT_ALIGNMENT_VIEW_END);
        messages.addView(tv);
    }

    private void showError(String title, Exception e) {
        String msg = e.getMessage() != null ? e.getMessage() : e.toString();
        new AlertDialog.Builder(this).setTitle(title).setMessage(msg).setPositiveButton(android.R.string.ok, null).show();
    }

    @Override
    public boolean onCreateOptionsMenu(Menu menu) {
        getMenuInflater().inflate(R.menu.main, menu);
        return true;
    }

    @Override
    public boolean onOptionsItemSelected(MenuItem item) {
        int id = item.getItemId();
        if (id == R.id.action_settings) {
            startActivity(new Intent(this, SettingsActivity.class));
        } else if (id == R.id.action_import) {
            startActivityForResult(new Intent(Intent.ACTION_OPEN_DOCUMENT).addCategory(Intent.CATEGORY_OPENABLE)
                    .setType("application/zip"), REQ_IMPORT);
        } else if (id == R.id.action_export) {
            startActivityForResult(new Intent(Intent.ACTION_CREATE_DOCUMENT).addCategory(Intent.CATEGORY_OPENABLE)
                    .setType("application/octet-stream").putExtra(Intent.EXTRA_TITLE, "kto-feedback.jsonl"), REQ_EXPORT);
        } else if (id == R.id.action_bench) {
            runBenchmark();
        } else if (id == R.id.action_reload) {
            loadBundle();
        } else {
            return super.onOptionsItemSelected(item);
        }
        return true;
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (result != RESULT_OK || data == null || data.getData() == null) return;
        Uri uri = data.getData();
        if (request == REQ_IMPORT) importBundle(uri);
        else if (request == REQ_EXPORT) exportFeedback(uri);
    }

    private void importBundle(Uri uri) {
        status.setText("Importing and verifying…");
        String name = displayName(uri).replaceFirst("(?i)\\.zip$", "");
        worker.execute(() -> {
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                BundleRepository.importZip(this, in, name);
                settings.selectBundle(name);
                ui.post(this::loadBundle);
            } catch (Exception e) {
                ui.post(() -> showError("Import refused", e));
            }
        });
    }

    /** To the picked document, and a copy in the app's files for `adb pull`. */
    private void exportFeedback(Uri uri) {
        worker.execute(() -> {
            try (OutputStream out = getContentResolver().openOutputStream(uri)) {
                int[] n = feedback.exportKto(out);
                File copy = new File(getExternalFilesDir("feedback"), "kto.jsonl");
                File tmp = new File(copy.getPath() + ".tmp");
                try (FileOutputStream os = new FileOutputStream(tmp)) {
                    feedback.exportKto(os);
                    os.getFD().sync();
                }
                if (!tmp.renameTo(copy)) throw new java.io.IOException("cannot write " + copy);
                String msg = String.format(Locale.ROOT, "%d rated answers exported (%d blank skipped); also at %s", n[0], n[1], copy);
                ui.post(() -> new AlertDialog.Builder(this).setTitle("Feedback exported").setMessage(msg)
                        .setPositiveButton(android.R.string.ok, null).show());
            } catch (Exception e) {
                ui.post(() -> showError("Export failed", e));
            }
        });
    }

    private String displayName(Uri uri) {
        try (Cursor c = getContentResolver().query(uri, new String[] {OpenableColumns.DISPLAY_NAME}, null, null, null)) {
            if (c != null && c.moveToFirst()) return c.getString(0);
        }
        return "bundle";
    }
}
