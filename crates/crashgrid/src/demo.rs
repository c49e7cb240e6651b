//! Demo debug files and crash events: a deterministic, realistic "world" for `crashgrid up` and
//! `crashgrid loadgen`.
//!
//! # What the world holds
//!
//! A [`DemoWorld`] is built from one `u64` seed and nothing else, so two processes (a load
//! generator and a test, or two pods) built from the same seed agree on every byte:
//!
//! * **Modules** — 43 arm64 binaries of a Unity-style mobile game: 26 Android ELF libraries
//!   (`libgame.so`, `libil2cpp.so`, `libunity.so`, `libc.so`, `libart.so`, ...) and 17 iOS
//!   Mach-O images (`GameApp`, `UnityFramework`, `libsystem_kernel.dylib`, `UIKitCore`, ...),
//!   some marked in-app. Each has a debug id and code id hashed from the seed and its name
//!   (ELF: a 20-byte build-id whose first 16 bytes, read as a little-endian GUID, are the debug
//!   id, as `symbolic` derives it; Mach-O: a UUID), and a few hundred functions laid out in a
//!   `.text` range (times the world's scale, see "Scale" below).
//! * **Debug files** — one Breakpad `.sym` text per module (`MODULE`, `INFO CODE_ID`, `FILE`,
//!   `INLINE_ORIGIN`, `FUNC` with `INLINE` and line records, `PUBLIC`), rendered on demand by
//!   [`DemoWorld::debug_files`] so the world itself stays small (~3 MB) while the files total
//!   ~8 MB (the largest ~600 kB). Names mix plain C, demangled C++, Itanium-mangled C++
//!   (`_ZN4game7physics4Body4stepEid`, so demangling is exercised), il2cpp-generated and
//!   Objective-C names. Many C++ functions contain inlined calls (one or two levels deep).
//! * **Crash groups** — [`GROUPS`] distinct stacks of 20–60 frames built like real ones
//!   (thread entry → runtime/run loop → engine → game code → crash site, e.g. `abort` for
//!   `SIGABRT`), each with a platform and an exception type. No two groups share their two
//!   innermost in-app frames, so any sensible fingerprint tells them apart. Groups are drawn
//!   Zipf-distributed (exponent [`GROUP_ZIPF_EXPONENT`]): a few crashes dominate, a long tail
//!   repeats rarely. Some groups are regressions that only occur from some app version on.
//! * **Users** — [`USERS`] ids split between platforms, drawn Zipf-distributed (exponent
//!   [`USER_ZIPF_EXPONENT`]); a user's device model and OS version are a function of the user,
//!   as they are in reality.
//!
//! # Events
//!
//! [`DemoWorld::event`] draws a group and a user and lays the platform's modules out at a
//! random (ASLR-like) base; frames are written as absolute addresses, as module-relative
//! `rel:N` addresses, or mixed. The crashing frame is the faulting instruction; every other frame
//! is a return address (call site + 4), exactly what a symbolicator has to adjust.
//! All randomness comes from the caller's RNG, so a seeded `StdRng` reproduces an event stream.
//!
//! [`Truth`] tallies what was sent, for comparison with a server's statistics.
//!
//! # Scale
//!
//! A game's big binaries have far more code than the demo modules' few hundred functions
//! (libunity.so, libil2cpp.so: 10⁵ functions; converting such a debug file into a SymCache
//! takes a second or more). [`DemoWorld::with_scale`] builds the same world with `scale`
//! times the functions in every module: the demo functions stay as they are (names,
//! addresses, sizes, lines, inlines) and the extra ones — same naming style, sizes, line
//! records and inlined calls, from an RNG of their own — follow them in the image. Crash
//! stacks are built from the demo functions only (the extra code never crashes), so groups,
//! users and the module-relative frames of every event are those of the unscaled world, and
//! they symbolicate to the same results; what changes is the debug files (~8 MB × `scale`
//! of Breakpad text in all, about linear conversion time), the image sizes, and so the
//! absolute addresses of events. Debug ids stay the same: a scaled file is the same build
//! with more of its code described. Scale 1 is [`DemoWorld::new`], byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::hash::Hasher;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use siphasher::sip128::{Hasher128, SipHasher13};
use stats::{Dimension, Snapshot, OTHER};
use symbolicate::{AddrMode, App, CrashEvent, DebugId, Exception, Frame, Module, Os, Thread};

/// Number of distinct crash groups in a world.
pub const GROUPS: usize = 300;
/// Number of distinct user ids in a world.
pub const USERS: usize = 50_000;
/// Zipf exponent of the crash-group distribution.
pub const GROUP_ZIPF_EXPONENT: f64 = 1.1;
/// Zipf exponent of the user distribution (heavy users crash more often).
pub const USER_ZIPF_EXPONENT: f64 = 0.8;
/// Application id of the demo game.
pub const APP_ID: &str = "com.crashgrid.demo.game";
/// Share of events that carry no user id.
const NO_USER_SHARE: f64 = 0.02;
/// Fewest and most frames of a crash group's stack.
const MIN_FRAMES: usize = 20;
const MAX_FRAMES: usize = 60;

/// App versions, oldest first, with the build number that goes with each and its share of
/// events (newer versions are used more).
const VERSIONS: [(&str, &str, f64); 5] = [
    ("4.0.2", "4020", 0.05),
    ("4.1.0", "4100", 0.10),
    ("4.1.1", "4110", 0.15),
    ("4.2.0", "4200", 0.30),
    ("4.3.0", "4300", 0.40),
];

/// The two platforms of the demo game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Android (ELF libraries, Breakpad `MODULE Linux`).
    Android,
    /// iOS (Mach-O images, Breakpad `MODULE mac`).
    Ios,
}

impl Platform {
    /// The `platform` field of events: `android` or `ios`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
        }
    }

    fn index(self) -> usize {
        match self {
            Platform::Android => 0,
            Platform::Ios => 1,
        }
    }

    fn os_name(self) -> &'static str {
        match self {
            Platform::Android => "Android",
            Platform::Ios => "iOS",
        }
    }

    fn breakpad_os(self) -> &'static str {
        match self {
            Platform::Android => "Linux",
            Platform::Ios => "mac",
        }
    }

    fn module_type(self) -> &'static str {
        match self {
            Platform::Android => "elf",
            Platform::Ios => "macho",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CLASSES: &[&str] = &[
    "Body", "World", "Solver", "Mesh", "Shader", "Texture", "Agent", "Path", "Socket", "Packet",
    "Mixer", "Widget", "Chunk", "Serializer", "Entity", "Component", "Scene", "Camera", "Light",
    "Material", "Buffer", "Allocator", "Pool", "Queue", "Scheduler", "Job", "Task", "Stream",
    "Reader", "Writer", "Parser", "Cache", "Registry", "Manager", "Controller", "Handler",
    "Session", "Channel", "Codec", "Voice", "Emitter", "Particle", "Collider", "Rigidbody", "Joint",
    "Animator", "Skeleton", "Clip", "Font", "Atlas", "Layout", "Canvas", "Sprite", "Tilemap",
    "Navmesh", "Blackboard", "Behaviour", "Inventory", "Quest", "Achievement",
];

#[rustfmt::skip]
const METHODS: &[&str] = &[
    "step", "update", "tick", "apply", "resolve", "load", "parse", "draw", "submit", "flush",
    "encode", "decode", "init", "shutdown", "reset", "resize", "insert", "remove", "find", "lookup",
    "process", "dispatch", "schedule", "execute", "run", "poll", "bind", "unbind", "attach",
    "detach", "serialize", "deserialize", "compute", "integrate", "collide", "raycast", "sweep",
    "spawn", "destroy", "activate", "deactivate", "evaluate", "sample", "blend", "mix", "read",
    "write", "open", "close", "connect", "send", "receive", "acquire", "release", "allocate",
    "deallocate", "grow", "compact", "validate", "commit", "rollback",
];

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "read", "write", "open", "close", "alloc", "free", "lock", "unlock", "init", "fini", "parse",
    "flush", "map", "unmap", "hash", "find", "insert", "remove", "resize", "copy", "compare",
    "signal", "wait", "wake", "poll", "dispatch", "encode", "decode", "update", "reset", "buffer",
    "queue", "table", "entry", "node", "page", "cache", "block", "stream", "context", "state",
    "config", "handle", "event", "thread", "timer", "socket", "file", "string", "array", "list",
    "object", "value", "header", "frame", "chunk", "create", "destroy", "get", "set",
];

#[rustfmt::skip]
const OBJC_CLASSES: &[&str] = &[
    "UIView", "UIViewController", "UIWindow", "UIApplication", "UIScrollView", "UITableView",
    "UICollectionView", "UILabel", "UIImageView", "NSObject", "NSString", "NSArray", "NSDictionary",
    "NSRunLoop", "NSThread", "NSOperationQueue", "NSNotificationCenter", "NSURLSession", "NSData",
    "NSFileManager", "CALayer", "CADisplayLink", "MTLDevice", "_UIViewControllerTransition",
    "UIGestureRecognizer", "_UISceneLifecycleMultiplexer",
];

#[rustfmt::skip]
const OBJC_SELECTORS: &[&str] = &[
    "layoutSubviews", "layoutIfNeeded", "setNeedsDisplay", "drawRect:", "viewDidLoad",
    "viewWillAppear:", "viewDidAppear:", "dealloc", "init", "initWithFrame:", "initWithCoder:",
    "setValue:forKey:", "valueForKey:", "performSelector:withObject:", "addObserver:selector:",
    "postNotificationName:object:", "runUntilDate:", "main", "start", "cancel", "sendEvent:",
    "_updateVisibleCells", "_layoutSubviews", "_run", "_sendTouchesForEvent:",
    "dataTaskWithRequest:completionHandler:", "objectForKey:", "setObject:forKey:", "addSubview:",
    "removeFromSuperview", "touchesBegan:withEvent:", "displayLinkFired:",
];

#[rustfmt::skip]
const IL2CPP_CLASSES: &[&str] = &[
    "PlayerController", "EnemySpawner", "InventoryManager", "QuestLog", "SaveSystem",
    "NetworkManager", "MatchmakingClient", "ShopController", "AdsManager", "AudioManager",
    "CameraFollow", "LevelLoader", "UIManager", "HealthBar", "WeaponController", "ProjectileMover",
    "AchievementTracker", "LeaderboardClient", "AnalyticsService", "List_1", "Dictionary_2",
    "String", "Array", "Enumerable", "Task_1", "JsonConvert",
];

#[rustfmt::skip]
const IL2CPP_METHODS: &[&str] = &[
    "Update", "FixedUpdate", "LateUpdate", "Awake", "Start", "OnEnable", "OnDisable", "OnDestroy",
    "OnTriggerEnter", "OnCollisionEnter", "Add", "Remove", "get_Item", "set_Item", "TryGetValue",
    "Serialize", "Deserialize", "MoveNext", "Invoke", "Load", "Save", "Spawn", "Fire", "TakeDamage",
    "Heal", "Purchase", "Refresh", "Show", "Hide", "Connect", "Send",
];

/// Builtin parameter types: Itanium code and printed form.
const PARAMS: &[(&str, &str)] = &[
    ("i", "int"),
    ("j", "unsigned int"),
    ("f", "float"),
    ("d", "double"),
    ("b", "bool"),
    ("l", "long"),
    ("m", "unsigned long"),
    ("x", "long long"),
    ("c", "char"),
];
/// Pointer parameter types (at most one per function, so no Itanium substitutions arise).
const POINTER_PARAMS: &[(&str, &str)] = &[("Pv", "void*"), ("PKc", "char const*")];

// ---------------------------------------------------------------------------------------------
// Module specifications
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Style {
    /// C++ in one of these namespaces (`""` = global); `mangled` is the share of names written
    /// Itanium-mangled (the rest demangled, as `dump_syms` writes them).
    Cpp {
        namespaces: &'static [&'static str],
        mangled: f64,
    },
    /// C functions: `prefix` + snake_case words (prefix ending in `_` or empty) or CamelCase.
    C { prefix: &'static str },
    /// Objective-C methods, plus C functions with `prefix`.
    ObjC { prefix: &'static str },
    /// il2cpp-generated C# methods plus il2cpp runtime C++.
    Il2cpp,
}

/// Where a module's functions appear in stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Game code (the frames that tell crashes apart).
    App,
    /// Engine code (Unity player loop, scripting).
    Engine,
    /// Runtime and run loop (ART, UIKit, CoreFoundation).
    Runtime,
    /// System libraries that appear at the crash site or as leaf calls.
    System,
}

struct Spec {
    name: &'static str,
    platform: Platform,
    in_app: bool,
    role: Role,
    funcs: (usize, usize),
    style: Style,
    fixed: &'static [&'static str],
    src: &'static str,
    path: &'static str,
}

const A: Platform = Platform::Android;
const I: Platform = Platform::Ios;

const GAME_NS: &[&str] = &[
    "game",
    "game::physics",
    "game::render",
    "game::ai",
    "game::net",
    "game::audio",
    "game::ui",
    "game::world",
    "game::save",
    "game::detail",
];
const UNITY_NS: &[&str] = &[
    "",
    "Unity",
    "Scripting",
    "Rendering",
    "Physics2D",
    "AssetBundle",
    "GfxDevice",
    "Profiling",
];
const UNITY_FIXED: &[&str] = &[
    "PlayerLoop()",
    "ExecutePlayerLoop(NativePlayerLoopSystem*)",
    "UnityPlayerLoop()",
    "nativeRender(_JNIEnv*, _jobject*)",
    "ScriptingInvocation::Invoke(ScriptingExceptionPtr*, bool)",
    "MonoBehaviour::CallUpdateMethod(int)",
    "BehaviourManager::Update()",
    "Thread::RunThreadWrapper(void*)",
    "JobQueue::WorkLoop(void*)",
    "UnityRepaint",
];
const IL2CPP_FIXED: &[&str] = &[
    "il2cpp::vm::Runtime::Invoke(MethodInfo const*, void*, void**, Il2CppException**)",
    "il2cpp_runtime_invoke",
    "il2cpp::vm::Exception::Raise(Il2CppException*, MethodInfo*)",
    "il2cpp_codegen_raise_null_reference_exception",
    "il2cpp::gc::GarbageCollector::Collect(int)",
];
const LIBC_FIXED: &[&str] = &[
    "__start_thread",
    "_ZL15__pthread_startPv",
    "abort",
    "raise",
    "memcpy",
    "strlen",
    "pthread_kill",
    "tgkill",
    "malloc",
    "free",
    "je_malloc",
    "je_free",
    "pthread_mutex_lock",
    "__futex_wait_ex",
    "epoll_wait",
    "__libc_init",
    "ioctl",
    "read",
    "write",
    "memmove",
];
const ART_FIXED: &[&str] = &[
    "art_quick_invoke_stub",
    "art::ArtMethod::Invoke(art::Thread*, unsigned int*, unsigned int, art::JValue*, char const*)",
    "art::interpreter::Execute(art::Thread*, art::CodeItemDataAccessor const&, art::ShadowFrame&, art::JValue, bool, bool)",
    "art_quick_generic_jni_trampoline",
    "art::Thread::CreateCallback(void*)",
];
const LIBCXX_FIXED: &[&str] = &[
    "std::terminate()",
    "std::__terminate(void (*)())",
    "__cxa_throw",
    "__cxa_rethrow",
    "std::__ndk1::__throw_out_of_range(char const*)",
];

const SPECS: &[Spec] = &[
    // ---- Android ------------------------------------------------------------------------
    Spec {
        name: "libgame.so",
        platform: A,
        in_app: true,
        role: Role::App,
        funcs: (500, 700),
        style: Style::Cpp { namespaces: GAME_NS, mangled: 0.6 },
        fixed: &[],
        src: "/home/ci/build/game/src",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libil2cpp.so",
        platform: A,
        in_app: true,
        role: Role::App,
        funcs: (600, 800),
        style: Style::Il2cpp,
        fixed: IL2CPP_FIXED,
        src: "/home/ci/build/il2cpp",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libnetcode.so",
        platform: A,
        in_app: true,
        role: Role::App,
        funcs: (200, 300),
        style: Style::Cpp {
            namespaces: &["net", "net::transport", "net::proto", "net::crypto"],
            mangled: 0.7,
        },
        fixed: &[],
        src: "/home/ci/build/netcode/src",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libmain.so",
        platform: A,
        in_app: true,
        role: Role::Engine,
        funcs: (20, 40),
        style: Style::C { prefix: "main_" },
        fixed: &["JNI_OnLoad"],
        src: "/home/ci/build/main",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libunity.so",
        platform: A,
        in_app: false,
        role: Role::Engine,
        funcs: (600, 800),
        style: Style::Cpp { namespaces: UNITY_NS, mangled: 0.3 },
        fixed: UNITY_FIXED,
        src: "/Users/builduser/unity/Runtime",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libfmod.so",
        platform: A,
        in_app: false,
        role: Role::App,
        funcs: (150, 250),
        style: Style::Cpp {
            namespaces: &["FMOD", "FMOD::DSP", "FMOD::Codec"],
            mangled: 0.5,
        },
        fixed: &[],
        src: "/builds/fmod/core/src",
        path: "/data/app/~~Q2VkYXJHcm92ZQ==/com.crashgrid.demo.game-1/lib/arm64",
    },
    Spec {
        name: "libsqlite.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (250, 350),
        style: Style::C { prefix: "sqlite3" },
        fixed: &["sqlite3_step", "sqlite3VdbeExec", "sqlite3_prepare_v2", "sqlite3BtreeInsert"],
        src: "external/sqlite/dist",
        path: "/system/lib64",
    },
    Spec {
        name: "libc.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (300, 400),
        style: Style::C { prefix: "__libc_" },
        fixed: LIBC_FIXED,
        src: "bionic/libc/bionic",
        path: "/apex/com.android.runtime/lib64/bionic",
    },
    Spec {
        name: "libm.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (150, 200),
        style: Style::C { prefix: "" },
        fixed: &["sin", "cos", "sqrtf", "powf", "exp", "log", "atan2f", "fmodf"],
        src: "bionic/libm/upstream-freebsd/lib/msun/src",
        path: "/apex/com.android.runtime/lib64/bionic",
    },
    Spec {
        name: "libdl.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (10, 20),
        style: Style::C { prefix: "__loader_" },
        fixed: &["dlopen", "dlsym", "dlclose", "dlerror", "android_dlopen_ext"],
        src: "bionic/libdl",
        path: "/apex/com.android.runtime/lib64/bionic",
    },
    Spec {
        name: "liblog.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (30, 60),
        style: Style::C { prefix: "__android_log_" },
        fixed: &["__android_log_print", "__android_log_write", "__android_log_assert"],
        src: "system/logging/liblog",
        path: "/system/lib64",
    },
    Spec {
        name: "libart.so",
        platform: A,
        in_app: false,
        role: Role::Runtime,
        funcs: (700, 900),
        style: Style::Cpp {
            namespaces: &["art", "art::gc", "art::jit", "art::interpreter", "art::mirror"],
            mangled: 0.4,
        },
        fixed: ART_FIXED,
        src: "art/runtime",
        path: "/apex/com.android.art/lib64",
    },
    Spec {
        name: "libandroid_runtime.so",
        platform: A,
        in_app: false,
        role: Role::Runtime,
        funcs: (300, 400),
        style: Style::Cpp { namespaces: &["android"], mangled: 0.4 },
        fixed: &["android::AndroidRuntime::javaThreadShell(void*)"],
        src: "frameworks/base/core/jni",
        path: "/system/lib64",
    },
    Spec {
        name: "libutils.so",
        platform: A,
        in_app: false,
        role: Role::Runtime,
        funcs: (150, 250),
        style: Style::Cpp { namespaces: &["android"], mangled: 0.4 },
        fixed: &[
            "android::Looper::pollInner(int)",
            "android::Looper::pollOnce(int, int*, int*, void**)",
            "android::Thread::_threadLoop(void*)",
        ],
        src: "system/core/libutils",
        path: "/system/lib64",
    },
    Spec {
        name: "libbinder.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (200, 300),
        style: Style::Cpp { namespaces: &["android", "android::binder"], mangled: 0.4 },
        fixed: &[],
        src: "frameworks/native/libs/binder",
        path: "/system/lib64",
    },
    Spec {
        name: "libhwui.so",
        platform: A,
        in_app: false,
        role: Role::Runtime,
        funcs: (400, 600),
        style: Style::Cpp {
            namespaces: &[
                "android::uirenderer",
                "android::uirenderer::renderthread",
                "android::uirenderer::skiapipeline",
            ],
            mangled: 0.4,
        },
        fixed: &[],
        src: "frameworks/base/libs/hwui",
        path: "/system/lib64",
    },
    Spec {
        name: "libEGL.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (80, 120),
        style: Style::C { prefix: "egl" },
        fixed: &["eglSwapBuffers", "eglMakeCurrent", "eglCreateContext"],
        src: "frameworks/native/opengl/libs/EGL",
        path: "/system/lib64",
    },
    Spec {
        name: "libGLESv2.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (150, 250),
        style: Style::C { prefix: "gl" },
        fixed: &["glDrawElements", "glBufferData", "glTexImage2D", "glDrawArrays"],
        src: "frameworks/native/opengl/libs/GLES2",
        path: "/system/lib64",
    },
    Spec {
        name: "libvulkan.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (100, 200),
        style: Style::C { prefix: "vk" },
        fixed: &["vkQueueSubmit", "vkQueuePresentKHR", "vkAllocateMemory"],
        src: "frameworks/native/vulkan/libvulkan",
        path: "/system/lib64",
    },
    Spec {
        name: "libc++.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (300, 400),
        style: Style::Cpp { namespaces: &["std::__ndk1"], mangled: 0.0 },
        fixed: LIBCXX_FIXED,
        src: "external/libcxx/src",
        path: "/system/lib64",
    },
    Spec {
        name: "libbase.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (100, 150),
        style: Style::Cpp { namespaces: &["android::base"], mangled: 0.5 },
        fixed: &[],
        src: "system/libbase",
        path: "/system/lib64",
    },
    Spec {
        name: "libcutils.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (80, 120),
        style: Style::C { prefix: "" },
        fixed: &["atrace_begin_body", "property_get"],
        src: "system/core/libcutils",
        path: "/system/lib64",
    },
    Spec {
        name: "libz.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (60, 100),
        style: Style::C { prefix: "" },
        fixed: &["inflate", "deflate", "inflate_fast", "crc32", "adler32", "longest_match"],
        src: "external/zlib",
        path: "/system/lib64",
    },
    Spec {
        name: "libssl.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (300, 400),
        style: Style::C { prefix: "SSL_" },
        fixed: &["SSL_read", "SSL_write", "SSL_do_handshake"],
        src: "external/boringssl/src/ssl",
        path: "/system/lib64",
    },
    Spec {
        name: "libcrypto.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (500, 700),
        style: Style::C { prefix: "" },
        fixed: &["EVP_DecryptUpdate", "AES_encrypt", "SHA256_Update", "BN_mod_exp"],
        src: "external/boringssl/src/crypto",
        path: "/system/lib64",
    },
    Spec {
        name: "libvndksupport.so",
        platform: A,
        in_app: false,
        role: Role::System,
        funcs: (10, 20),
        style: Style::C { prefix: "android_" },
        fixed: &["android_load_sphal_library"],
        src: "system/core/libvndksupport",
        path: "/system/lib64",
    },
    // ---- iOS ----------------------------------------------------------------------------
    Spec {
        name: "GameApp",
        platform: I,
        in_app: true,
        role: Role::App,
        funcs: (200, 300),
        style: Style::Cpp { namespaces: &["game", "game::ios", "game::physics"], mangled: 0.6 },
        fixed: &[
            "main",
            "-[AppDelegate application:didFinishLaunchingWithOptions:]",
            "-[UnityAppController startUnity:]",
        ],
        src: "/Users/ci/builds/GameApp/Classes",
        path: "/private/var/containers/Bundle/Application/5B0E8A36-3C51-4E4B-9F6B-2D1C0A9E7F31/GameApp.app",
    },
    Spec {
        name: "UnityFramework",
        platform: I,
        in_app: true,
        role: Role::App,
        funcs: (800, 1000),
        style: Style::Il2cpp,
        fixed: &[
            "PlayerLoop()",
            "UnityRepaint",
            "ExecutePlayerLoop(NativePlayerLoopSystem*)",
            "ScriptingInvocation::Invoke(ScriptingExceptionPtr*, bool)",
            "il2cpp::vm::Runtime::Invoke(MethodInfo const*, void*, void**, Il2CppException**)",
            "il2cpp::vm::Exception::Raise(Il2CppException*, MethodInfo*)",
            "-[UnityView drawView]",
            "-[UnityAppController(Rendering) repaintDisplayLink]",
        ],
        src: "/Users/ci/builds/GameApp/Il2CppOutputProject",
        path: "/private/var/containers/Bundle/Application/5B0E8A36-3C51-4E4B-9F6B-2D1C0A9E7F31/GameApp.app/Frameworks/UnityFramework.framework",
    },
    Spec {
        name: "dyld",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (100, 150),
        style: Style::Cpp { namespaces: &["dyld4", "dyld3"], mangled: 0.5 },
        fixed: &["start"],
        src: "/AppleInternal/Library/BuildRoots/dyld",
        path: "/usr/lib",
    },
    Spec {
        name: "libsystem_kernel.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (200, 300),
        style: Style::C { prefix: "" },
        fixed: &[
            "__pthread_kill",
            "mach_msg2_trap",
            "mach_msg_trap",
            "__psynch_cvwait",
            "__semwait_signal",
            "kevent_id",
            "__ulock_wait",
        ],
        src: "/AppleInternal/Library/BuildRoots/xnu/libsyscall",
        path: "/usr/lib/system",
    },
    Spec {
        name: "libsystem_pthread.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (60, 100),
        style: Style::C { prefix: "_pthread_" },
        fixed: &["pthread_kill", "_pthread_start", "thread_start", "_pthread_wqthread", "start_wqthread"],
        src: "/AppleInternal/Library/BuildRoots/libpthread/src",
        path: "/usr/lib/system",
    },
    Spec {
        name: "libsystem_c.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (300, 400),
        style: Style::C { prefix: "" },
        fixed: &["abort", "__assert_rtn", "strlen", "memcpy"],
        src: "/AppleInternal/Library/BuildRoots/Libc",
        path: "/usr/lib/system",
    },
    Spec {
        name: "libsystem_platform.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (60, 100),
        style: Style::C { prefix: "_platform_" },
        fixed: &["_platform_memmove", "_platform_strlen", "_platform_memset", "_os_unfair_lock_lock_slow"],
        src: "/AppleInternal/Library/BuildRoots/libplatform/src",
        path: "/usr/lib/system",
    },
    Spec {
        name: "libdispatch.dylib",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (200, 300),
        style: Style::C { prefix: "_dispatch_" },
        fixed: &[
            "_dispatch_call_block_and_release",
            "_dispatch_client_callout",
            "_dispatch_main_queue_drain",
            "_dispatch_root_queue_drain",
            "_dispatch_worker_thread2",
            "_dispatch_lane_serial_drain",
        ],
        src: "/AppleInternal/Library/BuildRoots/libdispatch/src",
        path: "/usr/lib/system",
    },
    Spec {
        name: "libobjc.A.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (200, 300),
        style: Style::C { prefix: "objc_" },
        fixed: &["_objc_terminate()", "objc_exception_throw", "objc_msgSend", "objc_release", "objc_retain"],
        src: "/AppleInternal/Library/BuildRoots/objc4/runtime",
        path: "/usr/lib",
    },
    Spec {
        name: "CoreFoundation",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (800, 1000),
        style: Style::ObjC { prefix: "CF" },
        fixed: &[
            "CFRunLoopRunSpecific",
            "__CFRunLoopRun",
            "__CFRunLoopDoSources0",
            "__CFRunLoopDoObservers",
            "__CFRUNLOOP_IS_CALLING_OUT_TO_A_SOURCE0_PERFORM_FUNCTION__",
            "__CFRUNLOOP_IS_CALLING_OUT_TO_AN_OBSERVER_CALLBACK_FUNCTION__",
            "__exceptionPreprocess",
        ],
        src: "/AppleInternal/Library/BuildRoots/CoreFoundation",
        path: "/System/Library/Frameworks/CoreFoundation.framework",
    },
    Spec {
        name: "Foundation",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (600, 800),
        style: Style::ObjC { prefix: "NS" },
        fixed: &["__NSThread__start__", "-[NSThread main]"],
        src: "/AppleInternal/Library/BuildRoots/Foundation",
        path: "/System/Library/Frameworks/Foundation.framework",
    },
    Spec {
        name: "UIKitCore",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (900, 1100),
        style: Style::ObjC { prefix: "UI" },
        fixed: &["UIApplicationMain", "-[UIApplication _run]", "-[UIApplication sendEvent:]"],
        src: "/AppleInternal/Library/BuildRoots/UIKitCore",
        path: "/System/Library/PrivateFrameworks/UIKitCore.framework",
    },
    Spec {
        name: "QuartzCore",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (400, 600),
        style: Style::Cpp { namespaces: &["CA", "CA::Render", "CA::OGL"], mangled: 0.3 },
        fixed: &[
            "CA::Display::DisplayLink::dispatch_items(unsigned long long, unsigned long long, unsigned long long)",
            "CA::Transaction::commit()",
        ],
        src: "/AppleInternal/Library/BuildRoots/QuartzCore",
        path: "/System/Library/Frameworks/QuartzCore.framework",
    },
    Spec {
        name: "Metal",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (200, 300),
        style: Style::ObjC { prefix: "MTL" },
        fixed: &["-[_MTLCommandBuffer commit]"],
        src: "/AppleInternal/Library/BuildRoots/Metal",
        path: "/System/Library/Frameworks/Metal.framework",
    },
    Spec {
        name: "libc++.1.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (250, 350),
        style: Style::Cpp { namespaces: &["std::__1"], mangled: 0.0 },
        fixed: &["std::__1::__throw_out_of_range[abi:ue170006](char const*)"],
        src: "/AppleInternal/Library/BuildRoots/libcxx/src",
        path: "/usr/lib",
    },
    Spec {
        name: "libc++abi.dylib",
        platform: I,
        in_app: false,
        role: Role::System,
        funcs: (80, 120),
        style: Style::Cpp { namespaces: &["__cxxabiv1"], mangled: 0.0 },
        fixed: &[
            "std::__terminate(void (*)())",
            "demangling_terminate_handler()",
            "abort_message",
            "__cxa_throw",
            "__cxa_rethrow",
        ],
        src: "/AppleInternal/Library/BuildRoots/libcxxabi/src",
        path: "/usr/lib",
    },
    Spec {
        name: "GraphicsServices",
        platform: I,
        in_app: false,
        role: Role::Runtime,
        funcs: (100, 150),
        style: Style::C { prefix: "GS" },
        fixed: &["GSEventRunModal"],
        src: "/AppleInternal/Library/BuildRoots/GraphicsServices",
        path: "/System/Library/PrivateFrameworks/GraphicsServices.framework",
    },
];

/// Exception types per platform: (type, share, value template; `{addr}` is replaced by a
/// fault address).
const ANDROID_EXCEPTIONS: &[(&str, f64, &str)] = &[
    (
        "SIGSEGV",
        0.50,
        "Segmentation violation (invalid memory reference) / SEGV_MAPERR at {addr}",
    ),
    ("SIGABRT", 0.30, "Abort"),
    ("SIGBUS", 0.08, "Bus error / BUS_ADRALN at {addr}"),
    ("SIGILL", 0.06, "Illegal instruction / ILL_ILLOPC at {addr}"),
    (
        "SIGFPE",
        0.06,
        "Floating point exception / FPE_INTDIV at {addr}",
    ),
];
const IOS_EXCEPTIONS: &[(&str, f64, &str)] = &[
    ("EXC_BAD_ACCESS", 0.50, "KERN_INVALID_ADDRESS at {addr}"),
    ("EXC_CRASH", 0.30, "SIGABRT"),
    ("EXC_BREAKPOINT", 0.15, "EXC_ARM_BREAKPOINT at {addr}"),
    ("EXC_BAD_INSTRUCTION", 0.05, "EXC_ARM_UNDEFINED at {addr}"),
];

/// Device models per platform with their share of users.
const ANDROID_DEVICES: &[(&str, f64)] = &[
    ("SM-S918B", 0.12),
    ("SM-A546B", 0.10),
    ("SM-G991B", 0.08),
    ("SM-A155F", 0.07),
    ("Pixel 8", 0.08),
    ("Pixel 7a", 0.07),
    ("Pixel 6", 0.05),
    ("Redmi Note 12", 0.09),
    ("2201117TG", 0.06),
    ("CPH2449", 0.05),
    ("moto g54 5G", 0.06),
    ("M2101K6G", 0.05),
    ("V2207", 0.04),
    ("RMX3630", 0.04),
    ("SM-T870", 0.04),
];
const IOS_DEVICES: &[(&str, f64)] = &[
    ("iPhone15,2", 0.14),
    ("iPhone15,3", 0.10),
    ("iPhone14,5", 0.14),
    ("iPhone14,7", 0.10),
    ("iPhone13,2", 0.10),
    ("iPhone12,1", 0.10),
    ("iPhone16,1", 0.08),
    ("iPhone16,2", 0.08),
    ("iPhone14,6", 0.06),
    ("iPad13,18", 0.05),
    ("iPad14,1", 0.05),
];
const ANDROID_OS: &[(&str, f64)] = &[("12", 0.15), ("13", 0.25), ("14", 0.40), ("15", 0.20)];
const IOS_OS: &[(&str, f64)] = &[
    ("16.7.8", 0.10),
    ("17.5.1", 0.25),
    ("17.6.1", 0.20),
    ("18.0.1", 0.15),
    ("18.1", 0.30),
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// 128 bits hashed from the seed and some labels (SipHash-1-3, fixed keys: stable forever).
fn hash128(seed: u64, parts: &[&str]) -> [u8; 16] {
    let mut h = SipHasher13::new_with_keys(seed, 0x6372_6173_6867_7264);
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish128().as_bytes()
}

fn hash64(seed: u64, parts: &[&str]) -> u64 {
    let b = hash128(seed, parts);
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

/// A uniform number in `[0, 1)` from 53 bits of `bits`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A cumulative distribution over `0..n`, sampled by binary search.
#[derive(Debug, Clone)]
struct Cdf(Vec<f64>);

impl Cdf {
    fn from_weights(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let mut cum: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        assert!(acc > 0.0, "a distribution needs positive weight");
        for c in &mut cum {
            *c /= acc;
        }
        Cdf(cum)
    }

    fn zipf(n: usize, exponent: f64) -> Self {
        Self::from_weights((1..=n).map(|k| (k as f64).powf(-exponent)))
    }

    fn at(&self, u: f64) -> usize {
        self.0.partition_point(|&c| c <= u).min(self.0.len() - 1)
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.at(rng.gen::<f64>())
    }
}

fn pick<'a, R: Rng + ?Sized>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn camel(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// A C++ function name, Itanium-mangled or as `dump_syms` prints it demangled.
fn cpp_name<R: Rng + ?Sized>(rng: &mut R, namespace: &str, mangled: bool, suffix: usize) -> String {
    let class = rng.gen_bool(0.85).then(|| pick(rng, CLASSES));
    let mut method = pick(rng, METHODS).to_string();
    if suffix > 0 {
        let _ = write!(method, "{suffix}");
    }
    let mut params: Vec<(&str, &str)> = Vec::new();
    let mut pointer = false;
    for _ in 0..rng.gen_range(0..=3) {
        if !pointer && rng.gen_bool(0.25) {
            pointer = true;
            params.push(POINTER_PARAMS[rng.gen_range(0..POINTER_PARAMS.len())]);
        } else {
            params.push(PARAMS[rng.gen_range(0..PARAMS.len())]);
        }
    }
    let is_const = class.is_some() && rng.gen_bool(0.2);
    let components: Vec<&str> = namespace
        .split("::")
        .filter(|s| !s.is_empty())
        .chain(class)
        .chain(std::iter::once(method.as_str()))
        .collect();
    if mangled {
        let mut out = String::from("_Z");
        let nested = components.len() > 1;
        if nested {
            out.push('N');
            if is_const {
                out.push('K');
            }
        }
        for c in &components {
            let _ = write!(out, "{}{}", c.len(), c);
        }
        if nested {
            out.push('E');
        }
        if params.is_empty() {
            out.push('v');
        }
        for (code, _) in &params {
            out.push_str(code);
        }
        out
    } else {
        let printed: Vec<&str> = params.iter().map(|(_, p)| *p).collect();
        format!(
            "{}({}){}",
            components.join("::"),
            printed.join(", "),
            if is_const { " const" } else { "" }
        )
    }
}

fn c_name<R: Rng + ?Sized>(rng: &mut R, prefix: &str, suffix: usize) -> String {
    let words: Vec<&str> = (0..rng.gen_range(1..=3))
        .map(|_| pick(rng, WORDS))
        .collect();
    let mut name = if prefix.is_empty() || prefix.ends_with('_') {
        format!("{prefix}{}", words.join("_"))
    } else {
        let camelled: String = words.iter().map(|w| camel(w)).collect();
        format!("{prefix}{camelled}")
    };
    if suffix > 0 {
        let _ = write!(name, "_{suffix}");
    }
    name
}

fn objc_name<R: Rng + ?Sized>(rng: &mut R, prefix: &str, suffix: usize) -> String {
    if rng.gen_bool(0.3) {
        return c_name(rng, prefix, suffix);
    }
    let class = pick(rng, OBJC_CLASSES);
    let selector = pick(rng, OBJC_SELECTORS);
    let sign = if rng.gen_bool(0.85) { '-' } else { '+' };
    if suffix > 0 {
        format!("{sign}[{class}(Private{suffix}) {selector}]")
    } else {
        format!("{sign}[{class} {selector}]")
    }
}

fn il2cpp_name<R: Rng + ?Sized>(rng: &mut R, suffix: usize) -> String {
    if rng.gen_bool(0.15) {
        return cpp_name(rng, "il2cpp::vm", false, suffix);
    }
    let class = pick(rng, IL2CPP_CLASSES);
    let method = pick(rng, IL2CPP_METHODS);
    let token: [u8; 20] = rng.gen();
    format!("{class}_{method}_m{}", hex_upper(&token))
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// A generated function name of `style` that is not in `names`; `suffix(attempt)` is the
/// number appended to the name at each try (0: none).
fn generated_name<R: Rng + ?Sized>(
    rng: &mut R,
    style: Style,
    names: &HashSet<String>,
    suffix: impl Fn(usize) -> usize,
) -> String {
    let mut attempt: usize = 0;
    loop {
        let suffix = suffix(attempt);
        let name = match style {
            Style::Cpp {
                namespaces,
                mangled,
            } => {
                let ns = pick(rng, namespaces);
                let mangled = rng.gen_bool(mangled);
                cpp_name(rng, ns, mangled, suffix)
            }
            Style::C { prefix } => c_name(rng, prefix, suffix),
            Style::ObjC { prefix } => objc_name(rng, prefix, suffix),
            Style::Il2cpp => il2cpp_name(rng, suffix),
        };
        if !names.contains(&name) {
            return name;
        }
        attempt += 1;
    }
}

/// A function named `name` laid out at `cursor` (moved past it), with a random size and
/// source position; a `fixed` one (stack skeleton) is always fully described.
fn new_func<R: Rng + ?Sized>(
    rng: &mut R,
    name: String,
    cursor: &mut u64,
    files: usize,
    fixed: bool,
    public_share: f64,
) -> Func {
    let words = if rng.gen_bool(0.85) {
        rng.gen_range(4..=120u64)
    } else {
        rng.gen_range(120..=2000u64)
    };
    let addr = align_up(*cursor, 16);
    let size = words * 4;
    *cursor = addr + size;
    Func {
        addr,
        size,
        name,
        file: rng.gen_range(0..files as u32),
        line: rng.gen_range(10..3000),
        // Fixed names are the stack skeleton: keep them fully described.
        public_only: !fixed && rng.gen_bool(public_share),
        inlines: Vec::new(),
    }
}

/// Gives about `share` of the functions from index `from` on one or two inlined calls (some
/// with a nested one) of other described functions.
fn add_inlines<R: Rng + ?Sized>(rng: &mut R, funcs: &mut [Func], from: usize, share: f64) {
    for i in from..funcs.len() {
        let f = &funcs[i];
        if f.public_only || f.size < 96 || !rng.gen_bool(share) {
            continue;
        }
        let (size, parent_file, parent_line) = (f.size, f.file, f.line);
        let mut inlines = Vec::new();
        let mut start = 8 + rng.gen_range(0..size / 4 / 4) * 4;
        for _ in 0..rng.gen_range(1..=2) {
            // Leave at least 16 bytes of the function after the inlinee.
            if start + 32 + 16 > size {
                break;
            }
            let max_len = (size - 16 - start) / 4;
            let len = rng.gen_range(8..=max_len.clamp(8, 200)) * 4;
            let origin = loop {
                let o = rng.gen_range(0..funcs.len());
                if o != i && !funcs[o].public_only {
                    break o;
                }
            };
            let outer = Inline {
                depth: 0,
                origin,
                call_file: parent_file,
                call_line: parent_line + rng.gen_range(1..40),
                addr: f.addr + start,
                size: len,
                file: funcs[origin].file,
                line: funcs[origin].line,
            };
            let nested = (len >= 48 && rng.gen_bool(0.4)).then(|| {
                let n_start = 8 + rng.gen_range(0..(len - 24) / 4 / 2) * 4;
                let n_len = rng.gen_range(2..=((len - 8 - n_start) / 4).max(2)) * 4;
                let n_origin = loop {
                    let o = rng.gen_range(0..funcs.len());
                    if o != i && o != origin && !funcs[o].public_only {
                        break o;
                    }
                };
                Inline {
                    depth: 1,
                    origin: n_origin,
                    call_file: outer.file,
                    call_line: outer.line + rng.gen_range(1..20),
                    addr: outer.addr + n_start,
                    size: n_len,
                    file: funcs[n_origin].file,
                    line: funcs[n_origin].line,
                }
            });
            start += len + rng.gen_range(2..16) * 4;
            inlines.push(outer);
            inlines.extend(nested);
        }
        funcs[i].inlines = inlines;
    }
}

// ---------------------------------------------------------------------------------------------
// Modules and functions
// ---------------------------------------------------------------------------------------------

/// An inlined call inside a function.
#[derive(Debug, Clone)]
struct Inline {
    /// 0 = called from the function itself, 1 = from the depth-0 inlinee, ...
    depth: u32,
    /// Index of the function whose body was inlined (its name is the INLINE_ORIGIN).
    origin: usize,
    call_file: u32,
    call_line: u32,
    /// Module-relative range.
    addr: u64,
    size: u64,
    /// Source of the inlined body.
    file: u32,
    line: u32,
}

#[derive(Debug, Clone)]
struct Func {
    addr: u64,
    size: u64,
    name: String,
    file: u32,
    line: u32,
    /// Only a `PUBLIC` record (no `FUNC`: no size, no lines), like code without debug info.
    public_only: bool,
    /// Inlined calls, ordered by address, outer before nested.
    inlines: Vec<Inline>,
}

/// One module (executable or library) of the demo world.
#[derive(Debug, Clone)]
pub struct DemoModule {
    /// Code file name, also the Breakpad `MODULE` name (e.g. `libgame.so`).
    pub name: &'static str,
    /// Platform it belongs to.
    pub platform: Platform,
    /// Whether it is the game's own code.
    pub in_app: bool,
    /// Debug identifier (as in the `.sym` `MODULE` record and in events).
    pub debug_id: DebugId,
    /// Code identifier, lowercase hex (ELF build-id, Mach-O UUID).
    pub code_id: String,
    /// Full path of the loaded binary, as events report it.
    pub code_file: String,
    /// Size of the mapped image.
    pub image_size: u64,
    role: Role,
    files: Vec<String>,
    funcs: Vec<Func>,
    /// The first `crash_funcs` functions are those crash stacks are built from; the rest (a
    /// scaled world's extra code, see [`DemoWorld::with_scale`]) never appear in a stack.
    crash_funcs: usize,
}

impl DemoModule {
    /// The name the debug file is uploaded under: `<name>.sym`.
    pub fn file_name(&self) -> String {
        format!("{}.sym", self.name)
    }

    /// Number of functions (`FUNC` and `PUBLIC`-only) in the module.
    pub fn function_count(&self) -> usize {
        self.funcs.len()
    }

    /// Builds the module of `spec` with `scale` times its functions (`scale` ≥ 1).
    fn build(seed: u64, spec: &Spec, scale: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(hash64(seed, &["module", spec.name]));
        let id = hash128(seed, &["debug-id", spec.name]);
        let (debug_id, code_id) = match spec.platform {
            Platform::Android => {
                let tail = hash128(seed, &["build-id-tail", spec.name]);
                let build_id: Vec<u8> = id.iter().chain(&tail[..4]).copied().collect();
                let debug_id = DebugId::from_guid_age(&build_id[..16], 0).expect("16-byte guid");
                (debug_id, hex_upper(&build_id).to_ascii_lowercase())
            }
            Platform::Ios => {
                let debug_id =
                    DebugId::from_breakpad(&format!("{}0", hex_upper(&id))).expect("uuid");
                (debug_id, hex_upper(&id).to_ascii_lowercase())
            }
        };

        // Source files.
        let ext = match spec.style {
            Style::C { .. } => "c",
            Style::ObjC { .. } => "m",
            _ => "cpp",
        };
        let n_files = rng.gen_range(8..=40);
        let mut files = Vec::with_capacity(n_files);
        let mut seen = HashSet::new();
        while files.len() < n_files {
            let dir = pick(&mut rng, WORDS);
            let stem = match spec.style {
                Style::C { .. } => pick(&mut rng, WORDS).to_string(),
                _ => pick(&mut rng, CLASSES).to_string(),
            };
            let path = format!("{}/{dir}/{stem}.{ext}", spec.src);
            if seen.insert(path.clone()) {
                files.push(path);
            }
        }

        // Functions: fixed names first, then generated ones, all distinct.
        let n_funcs = rng
            .gen_range(spec.funcs.0..=spec.funcs.1)
            .max(spec.fixed.len());
        let mut names: HashSet<String> = HashSet::with_capacity(n_funcs * scale);
        let mut funcs = Vec::with_capacity(n_funcs * scale);
        let mut cursor = 0x1_0000 + rng.gen_range(0..16u64) * 0x1000;
        let public_share = if spec.in_app { 0.02 } else { 0.06 };
        for i in 0..n_funcs {
            let name = match spec.fixed.get(i) {
                Some(fixed) => fixed.to_string(),
                // Up to five tries without a suffix, then `1`, `2`, ...
                None => generated_name(&mut rng, spec.style, &names, |attempt| {
                    attempt.saturating_sub(4)
                }),
            };
            let fixed = i < spec.fixed.len();
            let func = new_func(
                &mut rng,
                name,
                &mut cursor,
                files.len(),
                fixed,
                public_share,
            );
            names.insert(func.name.clone());
            funcs.push(func);
        }
        let inline_share = match spec.style {
            Style::Cpp { .. } | Style::Il2cpp => 0.35,
            _ => 0.1,
        };
        add_inlines(&mut rng, &mut funcs, 0, inline_share);

        // Scale: code that never crashes, after the functions above (whose addresses, lines
        // and inlines stay as they are), from an RNG of its own.
        let crash_funcs = funcs.len();
        if scale > 1 {
            let mut rng = StdRng::seed_from_u64(hash64(seed, &["module-scale", spec.name]));
            for i in crash_funcs..crash_funcs * scale {
                // Up to five tries without a suffix, then the function's index (distinct).
                let name = generated_name(&mut rng, spec.style, &names, |attempt| {
                    if attempt < 5 {
                        0
                    } else {
                        i + attempt - 5
                    }
                });
                let func = new_func(
                    &mut rng,
                    name,
                    &mut cursor,
                    files.len(),
                    false,
                    public_share,
                );
                names.insert(func.name.clone());
                funcs.push(func);
            }
            add_inlines(&mut rng, &mut funcs, crash_funcs, inline_share);
        }

        let image_size = align_up(cursor, 0x1000) + 0x8000;
        DemoModule {
            name: spec.name,
            platform: spec.platform,
            in_app: spec.in_app,
            debug_id,
            code_id,
            code_file: format!("{}/{}", spec.path, spec.name),
            image_size,
            role: spec.role,
            files,
            funcs,
            crash_funcs,
        }
    }

    fn func_index(&self, name: &str) -> usize {
        self.funcs[..self.crash_funcs]
            .iter()
            .position(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} has no function {name:?}", self.name))
    }

    /// The inline nesting (outermost first) in effect at module-relative `addr` of `func`.
    #[cfg(test)]
    fn inline_chain(&self, func: usize, addr: u64) -> Vec<&Inline> {
        self.funcs[func]
            .inlines
            .iter()
            .filter(|i| i.addr <= addr && addr < i.addr + i.size)
            .collect()
    }

    /// Renders the Breakpad `.sym` text of the module.
    pub fn breakpad(&self, seed: u64) -> String {
        let mut rng = StdRng::seed_from_u64(hash64(seed, &["lines", self.name]));
        let mut out = String::with_capacity(self.funcs.len() * 320);
        let _ = writeln!(
            out,
            "MODULE {} arm64 {} {}",
            self.platform.breakpad_os(),
            self.debug_id.breakpad(),
            self.name
        );
        let _ = writeln!(
            out,
            "INFO CODE_ID {} {}",
            self.code_id.to_ascii_uppercase(),
            self.name
        );
        for (i, f) in self.files.iter().enumerate() {
            let _ = writeln!(out, "FILE {i} {f}");
        }
        let origins: BTreeSet<usize> = self
            .funcs
            .iter()
            .flat_map(|f| f.inlines.iter().map(|i| i.origin))
            .collect();
        let origin_id: BTreeMap<usize, usize> =
            origins.iter().enumerate().map(|(id, &o)| (o, id)).collect();
        for (&o, id) in &origin_id {
            let _ = writeln!(out, "INLINE_ORIGIN {id} {}", self.funcs[o].name);
        }
        for f in self.funcs.iter().filter(|f| !f.public_only) {
            let _ = writeln!(out, "FUNC {:x} {:x} 0 {}", f.addr, f.size, f.name);
            for i in &f.inlines {
                let _ = writeln!(
                    out,
                    "INLINE {} {} {} {} {:x} {:x}",
                    i.depth, i.call_line, i.call_file, origin_id[&i.origin], i.addr, i.size
                );
            }
            // Line records: chunks never straddle an inlinee boundary; each chunk carries the
            // file and line of the innermost body it belongs to.
            let mut bounds: Vec<u64> = f
                .inlines
                .iter()
                .flat_map(|i| [i.addr, i.addr + i.size])
                .chain([f.addr + f.size])
                .collect();
            bounds.sort_unstable();
            let mut lines: Vec<u32> = std::iter::once(f.line)
                .chain(f.inlines.iter().map(|i| i.line))
                .collect();
            let mut pos = f.addr;
            while pos < f.addr + f.size {
                let next = bounds
                    .iter()
                    .copied()
                    .find(|&b| b > pos)
                    .expect("end bound");
                let end = (pos + rng.gen_range(1..=12u64) * 4).min(next);
                // Innermost context: the deepest inlinee containing `pos` (0 = the function).
                let ctx = f
                    .inlines
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.addr <= pos && pos < i.addr + i.size)
                    .max_by_key(|(_, i)| i.depth)
                    .map_or(0, |(k, _)| k + 1);
                let file = if ctx == 0 {
                    f.file
                } else {
                    f.inlines[ctx - 1].file
                };
                let _ = writeln!(out, "{:x} {:x} {} {}", pos, end - pos, lines[ctx], file);
                lines[ctx] += rng.gen_range(0..=2);
                pos = end;
            }
        }
        for f in self.funcs.iter().filter(|f| f.public_only) {
            let _ = writeln!(out, "PUBLIC {:x} 0 {}", f.addr, f.name);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Crash groups
// ---------------------------------------------------------------------------------------------

/// One frame of a crash group: a call site (or, innermost, the faulting instruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FrameRef {
    module: usize,
    func: usize,
    /// Offset of the instruction within the function (the call for non-crashing frames).
    offset: u64,
}

/// A distinct crash: its stack and what kind of crash it is.
#[derive(Debug, Clone)]
pub struct CrashGroup {
    /// Platform of the group.
    pub platform: Platform,
    /// Exception type, e.g. `SIGSEGV`.
    pub exception_type: &'static str,
    value: &'static str,
    /// Index into the app versions from which on the crash happens (a regression).
    min_version: usize,
    thread_name: &'static str,
    frames: Vec<FrameRef>,
}

impl CrashGroup {
    /// Number of frames of the crashing thread.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

/// The demo world: modules, their debug files, crash groups and users, all from one seed.
#[derive(Debug, Clone)]
pub struct DemoWorld {
    seed: u64,
    scale: usize,
    modules: Vec<DemoModule>,
    /// Per platform, the world indices of its modules in load order.
    platform_modules: [Vec<usize>; 2],
    /// World module index → its index in its platform's event module list.
    event_index: Vec<usize>,
    groups: Vec<CrashGroup>,
    group_cdf: Cdf,
    /// Per platform, user numbers ordered by activity rank.
    users: [Vec<u32>; 2],
    user_cdf: [Cdf; 2],
    /// Per minimum version index, the distribution over version indices.
    version_cdf: Vec<Cdf>,
    device_cdf: [Cdf; 2],
    os_cdf: [Cdf; 2],
}

impl DemoWorld {
    /// Builds the world for `seed` (about 20 ms).
    pub fn new(seed: u64) -> Self {
        Self::with_scale(seed, 1)
    }

    /// Builds the world for `seed` with every module holding `scale` times its functions
    /// (`scale` 0 counts as 1; `with_scale(seed, 1)` is [`DemoWorld::new`]). See "Scale" in the
    /// module docs: debug files grow about linearly (~8 MB × `scale` in all), crash groups,
    /// users and the frames of every event stay those of `DemoWorld::new(seed)`.
    pub fn with_scale(seed: u64, scale: usize) -> Self {
        let scale = scale.max(1);
        let modules: Vec<DemoModule> = SPECS
            .iter()
            .map(|s| DemoModule::build(seed, s, scale))
            .collect();
        let mut platform_modules: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut event_index = vec![0; modules.len()];
        for (i, m) in modules.iter().enumerate() {
            let list = &mut platform_modules[m.platform.index()];
            event_index[i] = list.len();
            list.push(i);
        }

        let mut world = DemoWorld {
            seed,
            scale,
            modules,
            platform_modules,
            event_index,
            groups: Vec::new(),
            group_cdf: Cdf::zipf(GROUPS, GROUP_ZIPF_EXPONENT),
            users: [Vec::new(), Vec::new()],
            user_cdf: [Cdf(vec![1.0]), Cdf(vec![1.0])],
            version_cdf: (0..VERSIONS.len())
                .map(|min| {
                    Cdf::from_weights(VERSIONS.iter().enumerate().map(|(i, v)| {
                        if i >= min {
                            v.2
                        } else {
                            0.0
                        }
                    }))
                })
                .collect(),
            device_cdf: [
                Cdf::from_weights(ANDROID_DEVICES.iter().map(|d| d.1)),
                Cdf::from_weights(IOS_DEVICES.iter().map(|d| d.1)),
            ],
            os_cdf: [
                Cdf::from_weights(ANDROID_OS.iter().map(|d| d.1)),
                Cdf::from_weights(IOS_OS.iter().map(|d| d.1)),
            ],
        };

        let mut rng = StdRng::seed_from_u64(hash64(seed, &["groups"]));
        let mut seen = HashSet::new();
        while world.groups.len() < GROUPS {
            let platform = if rng.gen_bool(0.65) {
                Platform::Android
            } else {
                Platform::Ios
            };
            let group = world.make_group(&mut rng, platform);
            let key: Vec<(usize, usize)> = group
                .frames
                .iter()
                .filter(|f| world.modules[f.module].in_app)
                .take(2)
                .map(|f| (f.module, f.func))
                .collect();
            if seen.insert(key) {
                world.groups.push(group);
            }
        }

        let mut urng = StdRng::seed_from_u64(hash64(seed, &["users"]));
        for u in 0..USERS as u32 {
            let p = world.user_platform(u);
            world.users[p.index()].push(u);
        }
        for list in &mut world.users {
            list.shuffle(&mut urng);
        }
        world.user_cdf = [
            Cdf::zipf(world.users[0].len(), USER_ZIPF_EXPONENT),
            Cdf::zipf(world.users[1].len(), USER_ZIPF_EXPONENT),
        ];
        world
    }

    /// The seed the world was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The factor on every module's function count (1 for [`DemoWorld::new`]).
    pub fn scale(&self) -> usize {
        self.scale
    }

    /// All modules, Android first.
    pub fn modules(&self) -> &[DemoModule] {
        &self.modules
    }

    /// All crash groups; index = group number.
    pub fn groups(&self) -> &[CrashGroup] {
        &self.groups
    }

    /// Every debug file as `(file name, contents)`: one Breakpad `.sym` per module, rendered
    /// lazily (one file in memory at a time).
    pub fn debug_files(&self) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
        (0..self.modules.len()).map(|i| self.debug_file(i))
    }

    /// The debug file of module `index` (see [`DemoWorld::modules`]) as `(file name, contents)`.
    pub fn debug_file(&self, index: usize) -> (String, Vec<u8>) {
        let m = &self.modules[index];
        (m.file_name(), m.breakpad(self.seed).into_bytes())
    }

    /// Draws a crash group: Zipf-distributed over group numbers (group 0 is the most frequent).
    pub fn sample_group<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.group_cdf.sample(rng)
    }

    /// A new crash event with timestamp = now.
    pub fn event<R: Rng + ?Sized>(&self, rng: &mut R) -> CrashEvent {
        self.event_with_group(rng).1
    }

    /// A new crash event with timestamp = now, and the group it was drawn from.
    pub fn event_with_group<R: Rng + ?Sized>(&self, rng: &mut R) -> (usize, CrashEvent) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let group = self.sample_group(rng);
        (group, self.event_for_group(group, rng, now))
    }

    fn user_platform(&self, user: u32) -> Platform {
        let h = hash64(self.seed, &["user-platform", &user.to_string()]);
        if unit(h) < 0.65 {
            Platform::Android
        } else {
            Platform::Ios
        }
    }

    /// A crash event of `group`; everything but the timestamp comes from `rng`.
    pub fn event_for_group<R: Rng + ?Sized>(
        &self,
        group: usize,
        rng: &mut R,
        timestamp_ms: i64,
    ) -> CrashEvent {
        let g = &self.groups[group];
        let p = g.platform.index();
        let (version, build, _) = VERSIONS[self.version_cdf[g.min_version].sample(rng)];

        // The user decides device and OS version.
        let user = self.users[p][self.user_cdf[p].sample(rng)];
        let profile = hash128(self.seed, &["user-profile", &user.to_string()]);
        let device_bits = u64::from_le_bytes(profile[..8].try_into().expect("8 bytes"));
        let os_bits = u64::from_le_bytes(profile[8..].try_into().expect("8 bytes"));
        let (devices, oses) = match g.platform {
            Platform::Android => (ANDROID_DEVICES, ANDROID_OS),
            Platform::Ios => (IOS_DEVICES, IOS_OS),
        };
        let device = devices[self.device_cdf[p].at(unit(device_bits))].0;
        let os_version = oses[self.os_cdf[p].at(unit(os_bits))].0;
        let user_id = (!rng.gen_bool(NO_USER_SHARE)).then(|| format!("user-{user:05}"));

        // ASLR: modules in load order from a random base, random gaps between them.
        let mut addr = match g.platform {
            Platform::Android => 0x70_0000_0000 + rng.gen_range(0..0x4_0000u64) * 0x10_0000,
            Platform::Ios => 0x1_0000_0000 + rng.gen_range(0..0x8000u64) * 0x4000,
        };
        let modules: Vec<Module> = self.platform_modules[p]
            .iter()
            .map(|&i| {
                let m = &self.modules[i];
                let image_addr = addr;
                addr += m.image_size + rng.gen_range(0..64u64) * 0x1000;
                Module {
                    ty: g.platform.module_type().to_string(),
                    code_file: Some(m.code_file.clone()),
                    debug_file: Some(m.name.to_string()),
                    debug_id: Some(m.debug_id),
                    code_id: Some(m.code_id.clone()),
                    image_addr,
                    image_size: Some(m.image_size),
                }
            })
            .collect();

        // 60 % absolute addresses, 30 % module-relative, 10 % mixed.
        let mode = rng.gen_range(0..10);
        let frames = g
            .frames
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let func = &self.modules[f.module].funcs[f.func];
                // A return address points after the call (arm64: 4 bytes).
                let rel = func.addr + f.offset + if k == 0 { 0 } else { 4 };
                let mi = self.event_index[f.module];
                let relative = match mode {
                    0..=5 => false,
                    6..=8 => true,
                    _ => rng.gen_bool(0.5),
                };
                if relative {
                    Frame {
                        instruction_addr: rel,
                        addr_mode: AddrMode::Rel(mi),
                    }
                } else {
                    Frame {
                        instruction_addr: modules[mi].image_addr + rel,
                        addr_mode: AddrMode::Abs,
                    }
                }
            })
            .collect();

        let fault = if rng.gen_bool(0.6) {
            rng.gen_range(0..0x100u64) * 8
        } else {
            rng.gen::<u64>() & 0x0000_007f_ffff_fff8
        };
        let event_id: u128 = rng.gen();
        CrashEvent {
            event_id: format!("{event_id:032x}"),
            timestamp_ms,
            app: App {
                id: APP_ID.to_string(),
                version: version.to_string(),
                build: Some(build.to_string()),
            },
            platform: g.platform.as_str().to_string(),
            os: Os {
                name: g.platform.os_name().to_string(),
                version: os_version.to_string(),
            },
            device_model: Some(device.to_string()),
            user_id,
            exception: Exception {
                ty: g.exception_type.to_string(),
                value: Some(g.value.replace("{addr}", &format!("{fault:#018x}"))),
            },
            modules,
            threads: vec![Thread {
                id: Some(rng.gen_range(1000..32000)),
                name: Some(g.thread_name.to_string()),
                crashed: true,
                frames,
            }],
        }
    }

    fn module_index(&self, name: &str) -> usize {
        self.modules
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no module {name:?}"))
    }

    /// A frame in the named function of the named module, at a random call site.
    fn named<R: Rng + ?Sized>(&self, rng: &mut R, module: &str, func: &str) -> FrameRef {
        let module = self.module_index(module);
        let func = self.modules[module].func_index(func);
        self.at(rng, module, func)
    }

    fn at<R: Rng + ?Sized>(&self, rng: &mut R, module: usize, func: usize) -> FrameRef {
        let size = self.modules[module].funcs[func].size;
        // A call instruction that is not the function's last, so the return address stays
        // inside the function.
        let offset = rng.gen_range(0..size / 4 - 1) * 4;
        FrameRef {
            module,
            func,
            offset,
        }
    }

    /// A frame in a random function of a random module of `platform` with `role`, preferring
    /// (when `in_app` is given) modules of that kind.
    fn random<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        platform: Platform,
        role: Role,
        in_app: Option<bool>,
    ) -> FrameRef {
        let candidates: Vec<usize> = self.platform_modules[platform.index()]
            .iter()
            .copied()
            .filter(|&i| {
                let m = &self.modules[i];
                m.role == role && in_app.is_none_or(|a| m.in_app == a)
            })
            .collect();
        let module = *candidates.choose(rng).expect("a module with that role");
        let func = rng.gen_range(0..self.modules[module].crash_funcs);
        self.at(rng, module, func)
    }

    /// Builds a stack, outermost frame first, then reverses it (events list innermost first).
    fn make_group<R: Rng + ?Sized>(&self, rng: &mut R, platform: Platform) -> CrashGroup {
        let exceptions = match platform {
            Platform::Android => ANDROID_EXCEPTIONS,
            Platform::Ios => IOS_EXCEPTIONS,
        };
        let (exception_type, _, value) =
            exceptions[Cdf::from_weights(exceptions.iter().map(|e| e.1)).sample(rng)];
        let main_thread = rng.gen_bool(0.7);
        let mut outer = Vec::new();
        let thread_name;
        match (platform, main_thread) {
            (Platform::Android, true) => {
                thread_name = "UnityMain";
                outer.push(self.named(rng, "libc.so", "__start_thread"));
                outer.push(self.named(rng, "libc.so", "_ZL15__pthread_startPv"));
                outer.push(self.named(rng, "libunity.so", "Thread::RunThreadWrapper(void*)"));
                for _ in 0..rng.gen_range(0..3) {
                    outer.push(self.random(rng, platform, Role::Runtime, None));
                }
                outer.push(self.named(rng, "libunity.so", "UnityPlayerLoop()"));
                outer.push(self.named(rng, "libunity.so", "PlayerLoop()"));
                outer.push(self.named(
                    rng,
                    "libunity.so",
                    "ExecutePlayerLoop(NativePlayerLoopSystem*)",
                ));
                for _ in 0..rng.gen_range(1..6) {
                    outer.push(self.random(rng, platform, Role::Engine, Some(false)));
                }
                outer.push(self.named(rng, "libunity.so", "BehaviourManager::Update()"));
                outer.push(self.named(
                    rng,
                    "libunity.so",
                    "ScriptingInvocation::Invoke(ScriptingExceptionPtr*, bool)",
                ));
                outer.push(self.named(rng, "libil2cpp.so", IL2CPP_FIXED[0]));
            }
            (Platform::Android, false) => {
                thread_name = if rng.gen_bool(0.5) {
                    "Job.Worker 3"
                } else {
                    "RenderThread"
                };
                outer.push(self.named(rng, "libc.so", "__start_thread"));
                outer.push(self.named(rng, "libc.so", "_ZL15__pthread_startPv"));
                if thread_name == "RenderThread" {
                    outer.push(self.named(
                        rng,
                        "libutils.so",
                        "android::Thread::_threadLoop(void*)",
                    ));
                    for _ in 0..rng.gen_range(2..6) {
                        outer.push(self.random(rng, platform, Role::Runtime, None));
                    }
                } else {
                    outer.push(self.named(rng, "libunity.so", "Thread::RunThreadWrapper(void*)"));
                    outer.push(self.named(rng, "libunity.so", "JobQueue::WorkLoop(void*)"));
                    for _ in 0..rng.gen_range(1..5) {
                        outer.push(self.random(rng, platform, Role::Engine, Some(false)));
                    }
                }
            }
            (Platform::Ios, true) => {
                thread_name = "com.apple.main-thread";
                outer.push(self.named(rng, "dyld", "start"));
                outer.push(self.named(rng, "GameApp", "main"));
                outer.push(self.named(rng, "UIKitCore", "UIApplicationMain"));
                outer.push(self.named(rng, "GraphicsServices", "GSEventRunModal"));
                outer.push(self.named(rng, "CoreFoundation", "CFRunLoopRunSpecific"));
                outer.push(self.named(rng, "CoreFoundation", "__CFRunLoopRun"));
                outer.push(self.named(rng, "CoreFoundation", "__CFRunLoopDoSources0"));
                for _ in 0..rng.gen_range(0..4) {
                    outer.push(self.random(rng, platform, Role::Runtime, None));
                }
                outer.push(self.named(
                    rng,
                    "UnityFramework",
                    "-[UnityAppController(Rendering) repaintDisplayLink]",
                ));
                outer.push(self.named(rng, "UnityFramework", "UnityRepaint"));
                outer.push(self.named(rng, "UnityFramework", "PlayerLoop()"));
                outer.push(self.named(
                    rng,
                    "UnityFramework",
                    "ScriptingInvocation::Invoke(ScriptingExceptionPtr*, bool)",
                ));
            }
            (Platform::Ios, false) => {
                thread_name = "com.apple.root.default-qos";
                outer.push(self.named(rng, "libsystem_pthread.dylib", "start_wqthread"));
                outer.push(self.named(rng, "libsystem_pthread.dylib", "_pthread_wqthread"));
                outer.push(self.named(rng, "libdispatch.dylib", "_dispatch_worker_thread2"));
                outer.push(self.named(rng, "libdispatch.dylib", "_dispatch_root_queue_drain"));
                outer.push(self.named(rng, "libdispatch.dylib", "_dispatch_client_callout"));
                for _ in 0..rng.gen_range(0..4) {
                    outer.push(self.random(rng, platform, Role::Runtime, None));
                }
            }
        }

        // The crash site, outermost first.
        let mut site = Vec::new();
        match (platform, exception_type) {
            (Platform::Android, "SIGABRT") => {
                if rng.gen_bool(0.5) {
                    site.push(self.named(rng, "libc++.so", "__cxa_throw"));
                    site.push(self.named(rng, "libc++.so", "std::__terminate(void (*)())"));
                    site.push(self.named(rng, "libc++.so", "std::terminate()"));
                }
                site.push(self.named(rng, "libc.so", "abort"));
                site.push(self.named(rng, "libc.so", "raise"));
                site.push(self.named(rng, "libc.so", "tgkill"));
            }
            (Platform::Android, "SIGSEGV") if rng.gen_bool(0.4) => {
                let f = *["memcpy", "strlen", "je_free", "memmove"]
                    .choose(rng)
                    .expect("non-empty");
                site.push(self.named(rng, "libc.so", f));
            }
            (Platform::Ios, "EXC_CRASH") => {
                if rng.gen_bool(0.6) {
                    site.push(self.named(rng, "libobjc.A.dylib", "objc_exception_throw"));
                    site.push(self.named(rng, "libc++abi.dylib", "std::__terminate(void (*)())"));
                    site.push(self.named(rng, "libobjc.A.dylib", "_objc_terminate()"));
                    site.push(self.named(rng, "libc++abi.dylib", "demangling_terminate_handler()"));
                    site.push(self.named(rng, "libc++abi.dylib", "abort_message"));
                }
                site.push(self.named(rng, "libsystem_c.dylib", "abort"));
                site.push(self.named(rng, "libsystem_pthread.dylib", "pthread_kill"));
                site.push(self.named(rng, "libsystem_kernel.dylib", "__pthread_kill"));
            }
            (Platform::Ios, "EXC_BAD_ACCESS") if rng.gen_bool(0.4) => {
                let f = *["_platform_memmove", "_platform_strlen", "_platform_memset"]
                    .choose(rng)
                    .expect("non-empty");
                site.push(self.named(rng, "libsystem_platform.dylib", f));
            }
            _ => {}
        }

        // Game code fills the middle up to a total of 20–60 frames.
        let target = rng.gen_range(MIN_FRAMES..=MAX_FRAMES);
        let n_app = target.saturating_sub(outer.len() + site.len()).max(4);
        let mut app = Vec::with_capacity(n_app);
        for _ in 0..n_app {
            let roll = rng.gen_range(0..100);
            let frame = if roll < 75 {
                self.random(rng, platform, Role::App, Some(true))
            } else if roll < 85 {
                self.random(rng, platform, Role::App, None)
            } else {
                self.random(rng, platform, Role::System, None)
            };
            app.push(frame);
        }
        // The innermost game frame must be game code (it carries the crash's identity).
        if let Some(last) = app.last_mut() {
            *last = self.random(rng, platform, Role::App, Some(true));
        }

        let mut frames: Vec<FrameRef> = outer.into_iter().chain(app).chain(site).collect();
        frames.truncate(MAX_FRAMES);
        frames.reverse();
        // The innermost frame is the faulting instruction: any instruction of the function.
        let top = &mut frames[0];
        let size = self.modules[top.module].funcs[top.func].size;
        top.offset = rng.gen_range(0..size / 4) * 4;

        let min_version = if rng.gen_bool(0.6) {
            0
        } else {
            rng.gen_range(1..VERSIONS.len())
        };
        CrashGroup {
            platform,
            exception_type,
            value,
            min_version,
            thread_name,
            frames,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ground truth
// ---------------------------------------------------------------------------------------------

/// What was sent, counted exactly: compare with a server's statistics.
///
/// Dimension keys are the events' raw values: `app_version` is `app.version` (the build number
/// is a function of the version in the demo world), `platform` the event's `platform`,
/// `os_version` is `os.version`, a missing device model counts as `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Truth {
    /// Number of events.
    pub total: u64,
    /// Events by app version.
    pub app_version: BTreeMap<String, u64>,
    /// Events by platform.
    pub platform: BTreeMap<String, u64>,
    /// Events by OS version.
    pub os_version: BTreeMap<String, u64>,
    /// Events by device model.
    pub device_model: BTreeMap<String, u64>,
    /// Events by exception type.
    pub exception_type: BTreeMap<String, u64>,
    /// Distinct user ids (events without one are not counted here).
    pub users: BTreeSet<String>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_string(), n);
        }
    }
}

impl Truth {
    /// Counts one event.
    pub fn add(&mut self, event: &CrashEvent) {
        self.total += 1;
        bump(&mut self.app_version, &event.app.version, 1);
        bump(&mut self.platform, &event.platform, 1);
        bump(&mut self.os_version, &event.os.version, 1);
        bump(
            &mut self.device_model,
            event.device_model.as_deref().unwrap_or("unknown"),
            1,
        );
        bump(&mut self.exception_type, &event.exception.ty, 1);
        if let Some(user) = &event.user_id {
            if !self.users.contains(user) {
                self.users.insert(user.clone());
            }
        }
    }

    /// Adds another tally to this one.
    pub fn merge(&mut self, other: &Truth) {
        self.total += other.total;
        for (mine, theirs) in [
            (&mut self.app_version, &other.app_version),
            (&mut self.platform, &other.platform),
            (&mut self.os_version, &other.os_version),
            (&mut self.device_model, &other.device_model),
            (&mut self.exception_type, &other.exception_type),
        ] {
            for (k, v) in theirs {
                bump(mine, k, *v);
            }
        }
        self.users.extend(other.users.iter().cloned());
    }

    /// Number of distinct users.
    pub fn distinct_users(&self) -> usize {
        self.users.len()
    }

    /// The tally for one of the stats dimensions.
    pub fn dimension(&self, dim: Dimension) -> &BTreeMap<String, u64> {
        match dim {
            Dimension::AppVersion => &self.app_version,
            Dimension::Platform => &self.platform,
            Dimension::OsVersion => &self.os_version,
            Dimension::DeviceModel => &self.device_model,
            Dimension::ExceptionType => &self.exception_type,
        }
    }

    /// How a server's snapshot differs from this tally, one line per difference; empty when
    /// they agree. Meant for a snapshot whose window holds exactly the tallied events.
    ///
    /// The total and every breakdown must match exactly: each listed value its count, and an
    /// [`stats::OTHER`] entry the sum of the values it stands for (a list without one
    /// must name every value). Distinct users are a HyperLogLog estimate, so they must only lie
    /// within `user_tolerance` (relative, e.g. `0.05` ≈ three standard errors at `p = 12`)
    /// or one user of the exact count.
    pub fn mismatches(&self, snapshot: &Snapshot, user_tolerance: f64) -> Vec<String> {
        let mut out = Vec::new();
        if snapshot.total != self.total {
            out.push(format!(
                "total: server {}, sent {}",
                snapshot.total, self.total
            ));
        }
        for dim in Dimension::ALL {
            let truth = self.dimension(dim);
            let listed = snapshot.breakdowns.get(dim);
            let mut other = None;
            let mut named = BTreeSet::new();
            for entry in listed {
                if entry.value == OTHER {
                    other = Some(entry.count);
                    continue;
                }
                named.insert(entry.value.as_str());
                let sent = truth.get(&entry.value).copied().unwrap_or(0);
                if entry.count != sent {
                    out.push(format!(
                        "{dim}[{}]: server {}, sent {sent}",
                        entry.value, entry.count
                    ));
                }
            }
            let rest: u64 = truth
                .iter()
                .filter(|(k, _)| !named.contains(k.as_str()))
                .map(|(_, v)| v)
                .sum();
            match other {
                Some(n) if n != rest => {
                    out.push(format!("{dim}[{OTHER}]: server {n}, sent {rest}"));
                }
                None if rest > 0 => {
                    let missing: Vec<&str> = truth
                        .keys()
                        .map(String::as_str)
                        .filter(|k| !named.contains(k))
                        .collect();
                    out.push(format!("{dim}: server lacks {missing:?} ({rest} events)"));
                }
                _ => {}
            }
        }
        let exact = self.users.len() as f64;
        let estimate = snapshot.distinct_users as f64;
        if (estimate - exact).abs() > (exact * user_tolerance).max(1.0) {
            out.push(format!(
                "distinct users: server {estimate}, sent {exact} (tolerance {:.1} %)",
                user_tolerance * 100.0
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::{Arc, OnceLock};
    use symbolicate::{inspect, CacheConfig, FrameStatus, SymCaches, SymbolStore, Symbolicator};

    fn world() -> &'static DemoWorld {
        static WORLD: OnceLock<DemoWorld> = OnceLock::new();
        WORLD.get_or_init(|| DemoWorld::new(7))
    }

    /// A unique scratch directory, removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "crashgrid-demo-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn world_has_the_promised_shape() {
        let w = world();
        assert!(
            (40..=45).contains(&w.modules().len()),
            "{}",
            w.modules().len()
        );
        assert_eq!(w.groups().len(), GROUPS);
        for m in w.modules() {
            assert!(
                m.function_count() >= 10,
                "{} has {} functions",
                m.name,
                m.function_count()
            );
        }
        let big = w
            .modules()
            .iter()
            .filter(|m| m.function_count() >= 200)
            .count();
        assert!(
            big >= 25,
            "most modules have a few hundred functions ({big})"
        );
        assert!(w
            .modules()
            .iter()
            .any(|m| m.in_app && m.platform == Platform::Android));
        assert!(w
            .modules()
            .iter()
            .any(|m| m.in_app && m.platform == Platform::Ios));
        let ids: HashSet<DebugId> = w.modules().iter().map(|m| m.debug_id).collect();
        assert_eq!(ids.len(), w.modules().len(), "debug ids are distinct");
        for g in w.groups() {
            assert!(
                (MIN_FRAMES..=MAX_FRAMES).contains(&g.frame_count()),
                "{}",
                g.frame_count()
            );
            for f in &g.frames {
                let m = &w.modules[f.module];
                assert_eq!(m.platform, g.platform);
                let func = &m.funcs[f.func];
                assert!(f.offset + 4 <= func.size, "frame inside its function");
            }
        }
        for p in [Platform::Android, Platform::Ios] {
            let n = w.groups().iter().filter(|g| g.platform == p).count();
            assert!(n > 50, "{p:?} has {n} groups");
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let a = DemoWorld::new(11);
        let b = DemoWorld::new(11);
        let c = DemoWorld::new(12);
        for (x, y) in a.debug_files().zip(b.debug_files()) {
            assert_eq!(x, y);
        }
        assert_ne!(a.modules()[0].debug_id, c.modules()[0].debug_id);
        let mut ra = StdRng::seed_from_u64(5);
        let mut rb = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let ga = a.sample_group(&mut ra);
            let gb = b.sample_group(&mut rb);
            assert_eq!(ga, gb);
            let ea = a.event_for_group(ga, &mut ra, 1_700_000_000_000);
            let eb = b.event_for_group(gb, &mut rb, 1_700_000_000_000);
            assert_eq!(ea, eb);
        }
        let ec = c.event_for_group(0, &mut StdRng::seed_from_u64(5), 0);
        let ea = a.event_for_group(0, &mut StdRng::seed_from_u64(5), 0);
        assert_ne!(ea.modules, ec.modules, "another seed, another world");
    }

    #[test]
    fn groups_are_zipf_skewed() {
        let w = world();
        let mut rng = StdRng::seed_from_u64(99);
        let mut counts = vec![0u32; GROUPS];
        for _ in 0..10_000 {
            counts[w.sample_group(&mut rng)] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top = sorted[0];
        let median = sorted[GROUPS / 2].max(1);
        assert!(top > 20 * median, "top {top} vs median {median}");
        assert!(top < 4000, "no single group takes everything ({top})");
        let distinct = counts.iter().filter(|&&c| c > 0).count();
        assert!(
            distinct > GROUPS / 2,
            "the tail shows up too ({distinct} groups seen)"
        );
    }

    #[test]
    fn users_are_skewed_and_consistent() {
        let w = world();
        let mut rng = StdRng::seed_from_u64(3);
        let mut per_user: BTreeMap<String, (u32, BTreeSet<String>)> = BTreeMap::new();
        for _ in 0..10_000 {
            let e = w.event(&mut rng);
            if let Some(u) = &e.user_id {
                let entry = per_user.entry(u.clone()).or_default();
                entry.0 += 1;
                entry.1.insert(format!(
                    "{}/{}/{}",
                    e.platform,
                    e.device_model.as_deref().unwrap_or(""),
                    e.os.version
                ));
            }
        }
        for (u, (_, profiles)) in &per_user {
            assert_eq!(
                profiles.len(),
                1,
                "user {u} always has the same device: {profiles:?}"
            );
        }
        let max = per_user.values().map(|v| v.0).max().unwrap();
        assert!(max >= 10, "some users crash often ({max})");
        assert!(per_user.len() > 2000, "many users ({})", per_user.len());
    }

    #[test]
    fn events_are_valid_json_events() {
        let w = world();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ids = HashSet::new();
        let mut modes = HashSet::new();
        for _ in 0..300 {
            let e = w.event(&mut rng);
            let value = serde_json::to_value(&e).unwrap();
            let parsed = CrashEvent::from_value(&value).expect("valid event");
            assert_eq!(parsed, e);
            assert!(ids.insert(e.event_id.clone()), "event ids are unique");
            let frames = &e.threads[0].frames;
            assert!((MIN_FRAMES..=MAX_FRAMES).contains(&frames.len()));
            for f in frames {
                modes.insert(matches!(f.addr_mode, AddrMode::Rel(_)));
            }
            let age = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
                - e.timestamp_ms;
            assert!((0..60_000).contains(&age), "timestamp is now");
        }
        assert_eq!(modes.len(), 2, "both absolute and relative frames occur");
    }

    #[test]
    fn truth_counts_what_it_sees() {
        let w = world();
        let mut rng = StdRng::seed_from_u64(8);
        let events: Vec<CrashEvent> = (0..1000).map(|_| w.event(&mut rng)).collect();
        let mut truth = Truth::default();
        for e in &events {
            truth.add(e);
        }
        assert_eq!(truth.total, 1000);
        for map in [
            &truth.app_version,
            &truth.platform,
            &truth.os_version,
            &truth.device_model,
            &truth.exception_type,
        ] {
            assert_eq!(map.values().sum::<u64>(), 1000);
        }
        let android = events.iter().filter(|e| e.platform == "android").count() as u64;
        assert_eq!(truth.platform.get("android").copied().unwrap_or(0), android);
        let sigsegv = events
            .iter()
            .filter(|e| e.exception.ty == "SIGSEGV")
            .count() as u64;
        assert_eq!(
            truth.exception_type.get("SIGSEGV").copied().unwrap_or(0),
            sigsegv
        );
        let users: BTreeSet<&String> = events.iter().filter_map(|e| e.user_id.as_ref()).collect();
        assert_eq!(truth.distinct_users(), users.len());
        assert!(users.len() < 1000, "users repeat");
        assert!(truth.app_version.len() >= 3 && truth.device_model.len() >= 10);

        // Merging two halves gives the whole.
        let (mut a, mut b) = (Truth::default(), Truth::default());
        for (i, e) in events.iter().enumerate() {
            if i % 3 == 0 {
                a.add(e)
            } else {
                b.add(e)
            }
        }
        a.merge(&b);
        assert_eq!(a, truth);
    }

    #[test]
    fn truth_compares_with_a_stats_snapshot() {
        let w = world();
        let mut rng = StdRng::seed_from_u64(17);
        let now = 1_700_000_000u64;
        let config = stats::WindowConfig {
            breakdown_limit: 8,
            ..stats::WindowConfig::default()
        };
        let mut window = stats::Window::new(config, now).unwrap();
        let mut truth = Truth::default();
        for i in 0..3000u64 {
            let e = w.event(&mut rng);
            truth.add(&e);
            window
                .add(&stats::CrashRecord {
                    second: now - i % 200,
                    app_version: &e.app.version,
                    platform: &e.platform,
                    os_version: &e.os.version,
                    device_model: e.device_model.as_deref().unwrap_or("unknown"),
                    exception_type: &e.exception.ty,
                    group_id: "g",
                    group_title: "t",
                    user_id: e.user_id.as_deref(),
                    symbolication_us: 10,
                })
                .unwrap();
        }
        let snapshot = window.snapshot(now);
        assert!(
            snapshot
                .breakdowns
                .device_model
                .iter()
                .any(|v| v.value == OTHER),
            "the long tail is folded into (other), and still checked"
        );
        assert_eq!(truth.mismatches(&snapshot, 0.05), Vec::<String>::new());

        // Any difference is reported.
        let mut more = truth.clone();
        let mut extra = w.event(&mut rng);
        extra.exception.ty = "SIGSYS".into();
        more.add(&extra);
        let diff = more.mismatches(&snapshot, 0.05);
        assert!(diff.iter().any(|d| d.starts_with("total")), "{diff:?}");
        assert!(
            diff.iter().any(|d| d.starts_with("exception_type")),
            "{diff:?}"
        );
        let mut fewer_users = truth.clone();
        let keep: BTreeSet<String> = fewer_users.users.iter().take(100).cloned().collect();
        fewer_users.users = keep;
        let diff = fewer_users.mismatches(&snapshot, 0.05);
        assert!(
            diff.iter().any(|d| d.starts_with("distinct users")),
            "{diff:?}"
        );
    }

    #[test]
    fn every_debug_file_parses_with_its_debug_id() {
        let w = world();
        let mut total = 0;
        for ((name, data), m) in w.debug_files().zip(w.modules()) {
            total += data.len();
            assert_eq!(name, format!("{}.sym", m.name));
            let infos = inspect(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(infos.len(), 1);
            assert_eq!(infos[0].debug_id, m.debug_id, "{name}");
            assert_eq!(infos[0].format, "breakpad");
            assert_eq!(infos[0].arch, "arm64");
            assert_eq!(
                infos[0].code_id.as_deref(),
                Some(m.code_id.as_str()),
                "{name}"
            );
            assert!(infos[0].has_debug_info, "{name}");
            let text = String::from_utf8(data).unwrap();
            assert!(text.lines().filter(|l| l.starts_with("FUNC ")).count() >= 9);
        }
        assert!(total > 2_000_000, "realistic sizes ({total} bytes)");
        let libgame = w.modules().iter().find(|m| m.name == "libgame.so").unwrap();
        let text = libgame.breakpad(w.seed());
        assert!(
            text.contains("\nFUNC ")
                && text.contains("\nINLINE ")
                && text.contains("\nINLINE_ORIGIN ")
        );
        assert!(text.contains(" 0 _ZN4game"), "mangled C++ names");
        let libc = w.modules().iter().find(|m| m.name == "libc.so").unwrap();
        assert!(libc.breakpad(w.seed()).contains("\nPUBLIC "));
    }

    #[test]
    fn events_symbolicate_against_the_debug_files() {
        let w = world();
        let scratch = Scratch::new("symbolicate");
        let store = SymbolStore::open(scratch.0.join("store")).unwrap();
        for (name, data) in w.debug_files() {
            store.add_bytes(&name, &data).unwrap();
        }
        let caches = Arc::new(SymCaches::new(
            store,
            CacheConfig::new(scratch.0.join("cache")),
        ));
        let symbolicator = Symbolicator::new(caches);

        let mut rng = StdRng::seed_from_u64(21);
        let (mut frames_checked, mut inlined, mut demangled, mut public) = (0, 0, 0, 0);
        for _ in 0..60 {
            let group = w.sample_group(&mut rng);
            let event = w.event_for_group(group, &mut rng, 1_700_000_000_000);
            let g = &w.groups()[group];
            let out = symbolicator.symbolicate(&event);
            let frames = &out.threads[0].frames;
            for (k, fr) in g.frames.iter().enumerate() {
                let m = &w.modules[fr.module];
                let func = &m.funcs[fr.func];
                let produced: Vec<_> = frames.iter().filter(|f| f.original_index == k).collect();
                assert!(!produced.is_empty());
                for p in &produced {
                    assert_eq!(
                        p.status,
                        FrameStatus::Symbolicated,
                        "{} frame {k}: {p:?}",
                        m.name
                    );
                }
                // The outermost output frame is the function itself.
                let outer = produced.last().unwrap();
                let source = outer.source.as_ref().unwrap();
                assert_eq!(
                    &*source.raw_function,
                    func.name.as_str(),
                    "{} frame {k}",
                    m.name
                );
                assert!(!source.inlined);
                assert_eq!(
                    outer.lookup_addr,
                    Some(func.addr + fr.offset),
                    "caller adjustment"
                );
                if func.name.starts_with("_Z") {
                    assert_ne!(source.function, source.raw_function, "demangled");
                    assert!(!source.function.starts_with("_Z"));
                    demangled += 1;
                }
                if func.public_only {
                    assert_eq!(source.lineno, 0);
                    public += 1;
                } else {
                    assert!(source.lineno > 0, "line info for {}", func.name);
                    assert_eq!(
                        source.abs_path.as_deref(),
                        Some(m.files[func.file as usize].as_str())
                    );
                }
                // Inlined frames: one per inline level at the looked-up address.
                let chain = m.inline_chain(fr.func, func.addr + fr.offset);
                assert_eq!(produced.len(), 1 + chain.len(), "{} {}", m.name, func.name);
                for (level, inl) in chain.iter().rev().enumerate() {
                    let s = produced[level].source.as_ref().unwrap();
                    assert!(s.inlined);
                    assert_eq!(&*s.raw_function, m.funcs[inl.origin].name.as_str());
                    inlined += 1;
                }
                frames_checked += 1;
            }
        }
        assert!(frames_checked > 1000, "{frames_checked}");
        assert!(inlined > 10, "inlined frames are exercised ({inlined})");
        assert!(demangled > 10, "demangling is exercised ({demangled})");
        eprintln!(
            "checked {frames_checked} frames: {inlined} inlined, {demangled} demangled, \
             {public} PUBLIC-only"
        );
    }
    /// Rule: `DemoWorld::new` stays what it was, byte for byte (`crashgrid up` clusters keep
    /// its debug files, tests compare its crashes): a digest of seed 7's debug files and first
    /// 300 events. Change the digest only with an intended change of the world.
    #[test]
    fn the_unscaled_world_stays_byte_identical() {
        let w = world();
        let mut h = SipHasher13::new_with_keys(0, 0);
        for (name, data) in w.debug_files() {
            h.write(name.as_bytes());
            h.write(&data);
        }
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..300 {
            let g = w.sample_group(&mut rng);
            let e = w.event_for_group(g, &mut rng, 1_700_000_000_000);
            h.write(&serde_json::to_vec(&e).unwrap());
        }
        let digest = hex_upper(&h.finish128().as_bytes());
        assert_eq!(
            digest, "87096D7A72DCC4DF9A563B81B9CED5B4",
            "the demo world changed"
        );
    }

    /// The module-relative address of every frame of the crashing thread.
    fn relative_frames(e: &CrashEvent) -> Vec<(usize, u64)> {
        e.threads[0]
            .frames
            .iter()
            .map(|f| match f.addr_mode {
                AddrMode::Rel(i) => (i, f.instruction_addr),
                AddrMode::Abs => {
                    let (i, m) = e
                        .modules
                        .iter()
                        .enumerate()
                        .find(|(_, m)| {
                            m.image_addr <= f.instruction_addr
                                && f.instruction_addr < m.image_addr + m.image_size.unwrap()
                        })
                        .expect("every frame is in a module");
                    (i, f.instruction_addr - m.image_addr)
                }
            })
            .collect()
    }

    /// Rule: a scaled world has `scale` times the functions of every module (distinct names,
    /// laid out one after the other in the image, inlines included) and otherwise the
    /// unscaled world's modules, crash groups and event frames; its crashes symbolicate
    /// against its own debug files to exactly the unscaled world's results.
    #[test]
    fn a_scaled_world_adds_code_that_never_crashes() {
        let w = world();
        let s = DemoWorld::with_scale(7, 3);
        assert_eq!((w.scale(), s.scale()), (1, 3));
        assert_eq!(DemoWorld::with_scale(7, 0).scale(), 1);
        let mut extra_inlines = 0;
        for (a, b) in w.modules().iter().zip(s.modules()) {
            assert_eq!(
                (a.name, a.debug_id, &a.code_id, &a.code_file),
                (b.name, b.debug_id, &b.code_id, &b.code_file)
            );
            assert_eq!(b.function_count(), 3 * a.function_count(), "{}", a.name);
            assert_eq!(b.crash_funcs, a.function_count());
            for (fa, fb) in a.funcs.iter().zip(&b.funcs) {
                assert_eq!(
                    (fa.addr, fa.size, &fa.name, fa.line, fa.public_only),
                    (fb.addr, fb.size, &fb.name, fb.line, fb.public_only)
                );
                assert_eq!(fa.inlines.len(), fb.inlines.len());
            }
            for pair in b.funcs.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{}", b.name);
            }
            let last = b.funcs.last().unwrap();
            assert!(last.addr + last.size <= b.image_size);
            let names: HashSet<&str> = b.funcs.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names.len(), b.funcs.len(), "distinct names in {}", b.name);
            extra_inlines += b.funcs[b.crash_funcs..]
                .iter()
                .filter(|f| !f.inlines.is_empty())
                .count();
        }
        assert!(extra_inlines > 1000, "{extra_inlines}");
        for (ga, gb) in w.groups().iter().zip(s.groups()) {
            assert_eq!(ga.frames, gb.frames);
            assert_eq!(
                (ga.exception_type, ga.min_version),
                (gb.exception_type, gb.min_version)
            );
        }

        let pod = |world: &DemoWorld, tag: &str| {
            let scratch = Scratch::new(tag);
            let store = SymbolStore::open(scratch.0.join("store")).unwrap();
            for (name, data) in world.debug_files() {
                store.add_bytes(&name, &data).unwrap();
            }
            let caches = SymCaches::new(store, CacheConfig::new(scratch.0.join("cache")));
            (scratch, Symbolicator::new(Arc::new(caches)))
        };
        let (_a_dir, a) = pod(w, "unscaled");
        let (_b_dir, b) = pod(&s, "scaled");
        let (mut ra, mut rb) = (StdRng::seed_from_u64(8), StdRng::seed_from_u64(8));
        let mut frames = 0;
        for _ in 0..40 {
            let (ga, ea) = w.event_with_group(&mut ra);
            let (gb, eb) = s.event_with_group(&mut rb);
            assert_eq!(ga, gb);
            assert_eq!(relative_frames(&ea), relative_frames(&eb));
            let (oa, ob) = (a.symbolicate(&ea), b.symbolicate(&eb));
            let fa = &oa.threads[0].frames;
            let fb = &ob.threads[0].frames;
            assert_eq!(fa.len(), fb.len());
            for (x, y) in fa.iter().zip(fb) {
                assert_eq!(
                    (x.status, x.original_index, x.lookup_addr, &x.source),
                    (y.status, y.original_index, y.lookup_addr, &y.source)
                );
                frames += 1;
            }
        }
        assert!(frames > 1000, "{frames}");
    }
}
