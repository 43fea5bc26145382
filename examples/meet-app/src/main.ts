// npm start: the app on $PORT (default 3000), with DATABASE_URL and REDIS_URL.
import { createApp } from "./app.js";
import { createPrisma } from "./lib/prisma.js";
import { cache } from "./lib/redis.js";

const port = Number(process.env.PORT ?? 3000);
createApp(createPrisma(), cache).listen(port, "127.0.0.1", () => console.log(`meet-app on http://127.0.0.1:${port}`));
