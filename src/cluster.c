/*
 * cluster.c
 *	  Redis Cluster's slot map and routing: the hash slot of a key (CRC16
 *	  of the key or of its {hash tag}, mod 16384), which master serves a
 *	  slot, and the masters' endpoints.  redis.c asks the nodes (CLUSTER
 *	  SLOTS) and feeds the answer in here; this file knows no protocol.
 *
 * Invariants:
 *	  - Everything is static and bounded (MC_CLUSTER_MAX_NODES masters):
 *		the commit path routes, and reloads the map, without palloc and
 *		without throwing.
 *	  - A map is built aside and installed whole: a failed or partial
 *		answer leaves the installed map as it was.  A map that does not
 *		cover every slot is refused (the cluster is not ready).
 *	  - Each map installed is published (mc_topology_publish: its masters
 *		and their slot counts) and counted, for meetcache.stats.
 *	  - The installed map belongs to one meetcache.redis_url (its
 *		generation): a new URL or TLS setting makes it stale, and so does
 *		any redirect or a node that does not answer; a stale map is asked
 *		for again before the next command is routed.
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "meetcache.h"
#include "transport.h"

typedef struct McClusterMap
{
	int			nnodes;
	McEndpoint	nodes[MC_CLUSTER_MAX_NODES];
	int16		owner[MC_CLUSTER_SLOTS];	/* node index, -1 unassigned */
} McClusterMap;

static McClusterMap map;		/* installed */
static McClusterMap next;		/* being built */
static bool map_valid = false;
static uint64 map_generation;
static McTopology topology;		/* what is published of the installed map */

/* CRC16-XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses */
static uint16
crc16(const char *buf, int len)
{
	uint16		crc = 0;

	for (int i = 0; i < len; i++)
	{
		crc ^= (uint16) ((unsigned char) buf[i]) << 8;
		for (int b = 0; b < 8; b++)
			crc = (crc & 0x8000) ? (uint16) ((crc << 1) ^ 0x1021) : (uint16) (crc << 1);
	}
	return crc;
}

/* the slot of a key: only a non-empty {tag} (the first '{' and the next '}') is hashed */
int
mc_cluster_slot(const char *key, int len)
{
	const char *open = memchr(key, '{', len);

	if (open)
	{
		int			rest = len - (int) (open - key) - 1;
		const char *close = memchr(open + 1, '}', rest);

		if (close && close > open + 1)
			return crc16(open + 1, (int) (close - open - 1)) % MC_CLUSTER_SLOTS;
	}
	return crc16(key, len) % MC_CLUSTER_SLOTS;
}

/* ---- building a map ---- */

void
mc_cluster_build_begin(void)
{
	next.nnodes = 0;
	for (int s = 0; s < MC_CLUSTER_SLOTS; s++)
		next.owner[s] = -1;
}

/* the index of a master (added when new), -1 when there are too many */
int
mc_cluster_build_node(const McEndpoint *ep)
{
	for (int i = 0; i < next.nnodes; i++)
		if (memcmp(&next.nodes[i], ep, sizeof(McEndpoint)) == 0)
			return i;
	if (next.nnodes == MC_CLUSTER_MAX_NODES)
		return -1;
	next.nodes[next.nnodes] = *ep;
	return next.nnodes++;
}

/* slots first..last are served by node; false when out of range */
bool
mc_cluster_build_slots(int first, int last, int node)
{
	if (first < 0 || last >= MC_CLUSTER_SLOTS || first > last || node < 0 || node >= next.nnodes)
		return false;
	for (int s = first; s <= last; s++)
		next.owner[s] = (int16) node;
	return true;
}

/* install the map built, if it covers every slot */
bool
mc_cluster_build_end(void)
{
	for (int s = 0; s < MC_CLUSTER_SLOTS; s++)
		if (next.owner[s] < 0)
			return false;
	map = next;
	map_valid = true;
	map_generation = mc_url_generation;

	topology.nnodes = map.nnodes;
	topology.url_hash = mc_url_hash;
	topology.loaded_at = GetCurrentTimestamp();
	for (int i = 0; i < map.nnodes; i++)
	{
		mc_endpoint_name(&map.nodes[i], topology.nodes[i].name, sizeof(topology.nodes[i].name));
		topology.nodes[i].slots = 0;
	}
	for (int s = 0; s < MC_CLUSTER_SLOTS; s++)
		topology.nodes[map.owner[s]].slots++;
	mc_topology_publish(&topology);
	mc_stat_add(MC_STAT_SLOT_MAP_LOADS, 1);
	return true;
}

/* ---- using the map ---- */

/* is the installed map usable for the current URL? */
bool
mc_cluster_map_ready(void)
{
	return map_valid && map_generation == mc_url_generation;
}

/* a redirect or a silent node: ask the cluster again before the next command */
void
mc_cluster_map_stale(void)
{
	map_valid = false;
}

int
mc_cluster_nnodes(void)
{
	return map.nnodes;
}

/* the master serving a slot (the map must be ready) */
int
mc_cluster_node_of(int slot)
{
	return map.owner[slot];
}

const McEndpoint *
mc_cluster_endpoint(int node)
{
	return &map.nodes[node];
}

/* the index of the master at ep, -1 when the map has none there */
int
mc_cluster_find(const McEndpoint *ep)
{
	for (int i = 0; i < map.nnodes; i++)
		if (memcmp(&map.nodes[i], ep, sizeof(McEndpoint)) == 0)
			return i;
	return -1;
}
