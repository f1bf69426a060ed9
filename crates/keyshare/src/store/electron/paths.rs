//! Where an Electron app keeps its user data, by app name and OS.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The VS Code family's app names (Electron's `productName`), as used in paths and keychain
/// items. Others are accepted too: an app name is any non-empty name without a path separator.
pub const KNOWN_APPS: &[&str] = &[
    "Code",
    "Code - Insiders",
    "Code - OSS",
    "VSCodium",
    "VSCodium - Insiders",
    "Cursor",
    "Windsurf",
];

/// The state database, relative to the user-data directory.
pub const STATE_DB_RELATIVE: [&str; 3] = ["User", "globalStorage", "state.vscdb"];

/// An operating system's directory conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    /// `${XDG_CONFIG_HOME:-~/.config}/<App>`
    Linux,
    /// `~/Library/Application Support/<App>`
    MacOs,
    /// `%APPDATA%\<App>`
    Windows,
}

impl Os {
    /// The OS this program runs on.
    pub fn current() -> Os {
        if cfg!(target_os = "macos") {
            Os::MacOs
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Linux
        }
    }
}

/// The user-data directory of `app_name`, resolved the way VS Code resolves its own, from this
/// process's environment. An `explicit` directory (keyshare's `--user-data-dir`) wins.
pub fn user_data_dir(app_name: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    user_data_dir_in(
        Os::current(),
        &|name| std::env::var_os(name),
        app_name,
        explicit,
    )
}

/// The state database inside a user-data directory: `<userData>/User/globalStorage/state.vscdb`.
pub fn state_db_path(user_data_dir: &Path) -> PathBuf {
    STATE_DB_RELATIVE
        .iter()
        .fold(user_data_dir.to_path_buf(), |p, part| p.join(part))
}

/// The user-data directory a state database path lies in, when it has the standard layout.
pub fn user_data_dir_of_state_db(state_db: &Path) -> Option<PathBuf> {
    let mut dir = state_db;
    for part in STATE_DB_RELATIVE.iter().rev() {
        if dir.file_name()? != *part {
            return None;
        }
        dir = dir.parent()?;
    }
    Some(dir.to_path_buf())
}

/// [`user_data_dir`] for a given OS and environment (so every OS's rules are tested here).
///
/// Order: `explicit`; `VSCODE_PORTABLE` -> `<portable>/user-data`; `VSCODE_APPDATA` ->
/// `<appdata>/<App>`; else Linux `${XDG_CONFIG_HOME:-$HOME/.config}/<App>`, macOS
/// `$HOME/Library/Application Support/<App>`, Windows `%APPDATA%\<App>` (else
/// `%USERPROFILE%\AppData\Roaming\<App>`). VS Code itself lets the two variables override its
/// `--user-data-dir`; keyshare's own flag wins, since whoever passes it means that directory.
pub fn user_data_dir_in(
    os: Os,
    env: &dyn Fn(&str) -> Option<OsString>,
    app_name: &str,
    explicit: Option<&Path>,
) -> Result<PathBuf> {
    check_app_name(app_name)?;
    let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = explicit {
        return absolute(dir);
    }
    if let Some(portable) = var("VSCODE_PORTABLE") {
        return absolute(&portable.join("user-data"));
    }
    if let Some(appdata) = var("VSCODE_APPDATA") {
        return absolute(&appdata.join(app_name));
    }
    let home = || {
        let name = if os == Os::Windows {
            "USERPROFILE"
        } else {
            "HOME"
        };
        var(name).ok_or_else(|| {
            Error::invalid(
                "user-data directory",
                format!("${name} is not set; give the user-data directory explicitly"),
            )
        })
    };
    let base = match os {
        Os::Linux => match var("XDG_CONFIG_HOME") {
            Some(config) => config,
            None => home()?.join(".config"),
        },
        Os::MacOs => home()?.join("Library").join("Application Support"),
        Os::Windows => match var("APPDATA") {
            Some(appdata) => appdata,
            None => home()?.join("AppData").join("Roaming"),
        },
    };
    Ok(base.join(app_name))
}

/// Rejects app names that would escape the directory they are joined to.
pub fn check_app_name(app_name: &str) -> Result<()> {
    if app_name.is_empty()
        || app_name == "."
        || app_name == ".."
        || app_name.contains(['/', '\\', '\0'])
    {
        return Err(Error::invalid(
            "app name",
            format!(
                "{app_name:?} is not an app name; use the app's product name, e.g. {}",
                KNOWN_APPS.join(", ")
            ),
        ));
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn per_os_defaults() {
        let env = env_of(&[("HOME", "/home/u"), ("USERPROFILE", "C:/Users/u")]);
        let linux = user_data_dir_in(Os::Linux, &env, "Code - Insiders", None).unwrap();
        assert_eq!(linux, Path::new("/home/u/.config/Code - Insiders"));
        let mac = user_data_dir_in(Os::MacOs, &env, "VSCodium", None).unwrap();
        assert_eq!(
            mac,
            Path::new("/home/u/Library/Application Support/VSCodium")
        );
        let win = user_data_dir_in(Os::Windows, &env, "Cursor", None).unwrap();
        assert_eq!(win, Path::new("C:/Users/u/AppData/Roaming/Cursor"));
    }

    #[test]
    fn xdg_and_appdata_are_honoured() {
        let env = env_of(&[
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("APPDATA", "/ad"),
        ]);
        assert_eq!(
            user_data_dir_in(Os::Linux, &env, "Code", None).unwrap(),
            Path::new("/xdg/Code")
        );
        assert_eq!(
            user_data_dir_in(Os::Windows, &env, "Code", None).unwrap(),
            Path::new("/ad/Code")
        );
    }

    #[test]
    fn vscode_variables_then_explicit_win() {
        let env = env_of(&[
            ("HOME", "/h"),
            ("VSCODE_PORTABLE", "/portable"),
            ("VSCODE_APPDATA", "/vsappdata"),
        ]);
        assert_eq!(
            user_data_dir_in(Os::Linux, &env, "Code", None).unwrap(),
            Path::new("/portable/user-data")
        );
        let env = env_of(&[("HOME", "/h"), ("VSCODE_APPDATA", "/vsappdata")]);
        assert_eq!(
            user_data_dir_in(Os::MacOs, &env, "Windsurf", None).unwrap(),
            Path::new("/vsappdata/Windsurf")
        );
        assert_eq!(
            user_data_dir_in(Os::Linux, &env, "Code", Some(Path::new("/explicit"))).unwrap(),
            Path::new("/explicit")
        );
        let relative = user_data_dir_in(Os::Linux, &env, "Code", Some(Path::new("rel"))).unwrap();
        assert!(relative.is_absolute() && relative.ends_with("rel"));
    }

    #[test]
    fn missing_home_is_a_clear_error() {
        let err = user_data_dir_in(Os::Linux, &env_of(&[]), "Code", None).unwrap_err();
        assert!(err.to_string().contains("$HOME is not set"), "{err}");
    }

    #[test]
    fn app_names_cannot_escape() {
        let env = env_of(&[("HOME", "/h")]);
        for bad in ["", "..", "a/b", "a\\b"] {
            assert!(
                user_data_dir_in(Os::Linux, &env, bad, None).is_err(),
                "{bad:?}"
            );
        }
        for good in KNOWN_APPS {
            assert!(user_data_dir_in(Os::Linux, &env, good, None).is_ok());
        }
    }

    #[test]
    fn state_db_layout() {
        let db = state_db_path(Path::new("/h/.config/Code"));
        assert_eq!(
            db,
            Path::new("/h/.config/Code/User/globalStorage/state.vscdb")
        );
        assert_eq!(
            user_data_dir_of_state_db(&db).unwrap(),
            Path::new("/h/.config/Code")
        );
        assert_eq!(
            user_data_dir_of_state_db(Path::new("/tmp/state.vscdb")),
            None
        );
        assert_eq!(user_data_dir_of_state_db(Path::new("state.vscdb")), None);
    }
}
