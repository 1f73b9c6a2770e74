package dev.edgekto.demo;

import android.app.Activity;
import android.os.Bundle;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.EditText;
import android.widget.Spinner;
import android.widget.Toast;
import dev.edgekto.core.BundleVerifier;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** Bundle, artifact (GGUF / ONNX), threads, max new tokens, temperature. */
public class SettingsActivity extends Activity {
    private Settings settings;
    private Spinner bundle, artifact;
    private final List<String> artifactPaths = new ArrayList<>();

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_settings);
        settings = new Settings(this);
        bundle = findViewById(R.id.bundle);
        artifact = findViewById(R.id.artifact);
        EditText threads = findViewById(R.id.threads), maxTokens = findViewById(R.id.max_tokens), temp = findViewById(R.id.temperature);
        threads.setText(String.valueOf(settings.threads()));
        maxTokens.setText(String.valueOf(settings.maxTokens()));
        temp.setText(String.valueOf(settings.temperature()));

        List<String> names = BundleRepository.names(this);
        bundle.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, names));
        int sel = names.indexOf(settings.bundle());
        if (sel >= 0) bundle.setSelection(sel);
        bundle.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, android.view.View view, int position, long id) {
                fillArtifacts(names.get(position));
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {}
        });

        findViewById(R.id.save).setOnClickListener(v -> {
            try {
                int t = Integer.parseInt(threads.getText().toString().trim());
                int m = Integer.parseInt(maxTokens.getText().toString().trim());
                float temperature = Float.parseFloat(temp.getText().toString().trim());
                if (t < 1 || t > 16) throw new IllegalArgumentException("threads must be 1..16");
                if (m < 1 || m > 4096) throw new IllegalArgumentException("max new tokens must be 1..4096");
                if (temperature < 0 || temperature > 2) throw new IllegalArgumentException("temperature must be 0..2");
                String b = names.isEmpty() ? null : names.get(bundle.getSelectedItemPosition());
                String a = artifactPaths.isEmpty() ? null : artifactPaths.get(artifact.getSelectedItemPosition());
                settings.save(b, a, t, m, temperature);
                finish();
            } catch (IllegalArgumentException e) { // NumberFormatException included
                Toast.makeText(this, e.getMessage(), Toast.LENGTH_LONG).show();
            }
        });
    }

    /** Lists the bundle's artifacts from its manifest (no hashing here; loading verifies). */
    private void fillArtifacts(String name) {
        artifactPaths.clear();
        List<String> labels = new ArrayList<>();
        try {
            BundleVerifier v = new BundleVerifier(new File(BundleRepository.root(this), name));
            for (Map<String, Object> a : BundleRepository.artifacts(v)) {
                artifactPaths.add((String) a.get("path"));
                labels.add(a.get("quant") + " · " + a.get("backend") + ("onnxruntime-genai".equals(a.get("backend")) && !BuildConfig.WITH_ONNX ? " (not in this build)" : ""));
            }
        } catch (BundleVerifier.BundleException e) {
            Toast.makeText(this, e.getMessage(), Toast.LENGTH_LONG).show();
        }
        artifact.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, labels));
        int sel = artifactPaths.indexOf(settings.artifact());
        if (sel >= 0) artifact.setSelection(sel);
    }
}
