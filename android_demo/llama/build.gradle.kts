// llama.cpp for the GGUF artifact: CMake builds llama.cpp (pinned to the commit the export's
// converter and quantizer come from) and the JNI bridge src/main/cpp/edge_llama.cpp.
plugins {
    id("com.android.library")
}

android {
    namespace = "dev.edgekto.llama"
    compileSdk = 35
    ndkVersion = "27.2.12479018"

    defaultConfig {
        minSdk = 26
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
        externalNativeBuild {
            cmake {
                arguments += listOf("-DCMAKE_BUILD_TYPE=Release", "-DANDROID_STL=c++_shared")
                // A local llama.cpp checkout instead of fetching the pinned commit:
                // arguments += "-DLLAMA_CPP_DIR=/path/to/llama.cpp"
            }
        }
    }
    externalNativeBuild {
        cmake {
            path("src/main/cpp/CMakeLists.txt")
            version = "3.22.1"
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

dependencies {
    api(project(":core"))
}
