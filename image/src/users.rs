//! An image's `User` (`name`, `uid`, `name:group`, `uid:gid`, …) as the uid, gid and
//! supplementary groups the process runs with, resolved through the rootfs's own
//! `/etc/passwd` and `/etc/group` as Docker and containerd resolve it.

/// The process identity an image's `User` names.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4).then(|| Some(Passwd { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })).flatten()
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3)
            .then(|| {
                let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
                Some(Group { name: f[0], gid: f[2].parse().ok()?, members })
            })
            .flatten()
    })
}

/// Resolves `user` against the passwd and group files' contents (empty if the image has
/// none). A name that is not in them is an error naming the file; a number needs no entry.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() {
        return Err(format!("User {user:?}: no user"));
    }
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == u)
                .ok_or_else(|| format!("User {user:?}: no user {u:?} in the image's /etc/passwd"))?,
        ),
    };
    let uid = u.parse::<u32>().ok().or(entry.as_ref().map(|p| p.uid)).unwrap_or(0);
    let gid = match g {
        Some("") => return Err(format!("User {user:?}: no group after ':'")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("User {user:?}: no group {g:?} in the image's /etc/group"))?,
        },
        None => entry.as_ref().map(|p| p.gid).unwrap_or(0),
    };
    // Supplementary groups are the user's memberships, only when the group was not forced.
    let mut additional_gids = Vec::new();
    if let (None, Some(p)) = (g, &entry) {
        for e in group_entries(group) {
            if e.members.contains(&p.name) && e.gid != gid && !additional_gids.contains(&e.gid) {
                additional_gids.push(e.gid);
            }
        }
    }
    Ok(Identity { uid, gid, additional_gids })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nbad line\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nweb:x:80:www\n";

    #[test]
    fn names_and_numbers_resolve_as_docker_does() {
        assert_eq!(
            resolve("www", PASSWD, GROUP).unwrap(),
            Identity { uid: 33, gid: 33, additional_gids: vec![50, 80] }
        );
        assert_eq!(resolve("33", PASSWD, GROUP).unwrap(), Identity { uid: 33, gid: 33, additional_gids: vec![50, 80] });
        assert_eq!(
            resolve("www:staff", PASSWD, GROUP).unwrap(),
            Identity { uid: 33, gid: 50, additional_gids: vec![] }
        );
        assert_eq!(resolve("1234", PASSWD, GROUP).unwrap(), Identity { uid: 1234, gid: 0, additional_gids: vec![] });
        assert_eq!(resolve("1234:99", "", "").unwrap(), Identity { uid: 1234, gid: 99, additional_gids: vec![] });
    }

    #[test]
    fn unknown_names_are_errors_naming_the_file() {
        assert!(resolve("nobody", PASSWD, GROUP).unwrap_err().contains("/etc/passwd"));
        assert!(resolve("www:nogroup", PASSWD, GROUP).unwrap_err().contains("/etc/group"));
        assert!(resolve(":0", PASSWD, GROUP).is_err());
    }
}
