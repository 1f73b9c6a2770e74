plugins {
    id("com.android.application")
}

// onnxruntime-genai for the ONNX artifact: its Android AAR is a release asset of
// github.com/microsoft/onnxruntime-genai (not on Maven Central). Drop
// onnxruntime-genai-android-0.18.0.aar (the version the export's builder used) into app/libs/
// and the ONNX engine (src/onnx/java) is compiled in; without it the app runs GGUF only.
val genaiAar = fileTree("libs") { include("onnxruntime-genai-android-*.aar") }
val withOnnx = !genaiAar.isEmpty

android {
    namespace = "dev.edgekto.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgekto.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
        buildConfigField("boolean", "WITH_ONNX", withOnnx.toString())
    }
    buildFeatures {
        buildConfig = true
    }
    sourceSets["main"].java.srcDirs(if (withOnnx) listOf("src/main/java", "src/onnx/java") else listOf("src/main/java"))
    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // a demo: sideload the release build too
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    packaging {
        jniLibs.useLegacyPackaging = false // keep .so files uncompressed and page-aligned in the APK
    }
}

dependencies {
    implementation(project(":llama"))
    if (withOnnx) {
        implementation(genaiAar)
        implementation("com.microsoft.onnxruntime:onnxruntime-android:1.32.0") // the ORT release the Python runtime ran genai 0.18.0 with
    }
}
